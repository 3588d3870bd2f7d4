import { execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { FennecError } from "../../../core/errors.js";
import type { FunctionConfig, OciSandboxConfig } from "../../../config/function-config.js";
import { sandboxOf } from "../../../config/sandbox-table.js";
import { removeNested } from "../../cgroups.js";
import { CleanupStack } from "../../cleanup-stack.js";
import type { CleanupReport, SandboxDriver, SandboxHandle, StartContext } from "../../contract.js";
import { HandlerBundles } from "../../handler-build.js";
import { findExecutable, INSIDE, systemDirs } from "../../host-view.js";
import { nodeInside, removeRootfs, RootfsBuilds, type BuiltRootfs } from "../../rootfs-build.js";
import { createRunDirOn, mergeReports, ownerOf, runRoot, sweepStale } from "../../run-dir.js";
import { BINDING_INSIDE, createSocketDir, readyOnSocket, SOCKET_INSIDE } from "../../socket-dir.js";
import { openBinding, type HostBinding } from "../../host-binding.js";
import { fromChildProcess, SupervisedChild } from "../../supervised-child.js";
import { mountPointsUnder } from "../../mounts.js";
import { mountOverlay, unmountOverlay } from "./overlay.js";
import { ociSpec, type BindMount } from "./spec.js";
import { forwardOciPort } from "./port-forward.js";

const run = promisify(execFile);
/** Containers' cgroups nest under `<Fennec's own cgroup>/fennec-oci/` in each hierarchy. */
const CGROUP_PARENT = "fennec-oci";
/** How long a stopped container's deletion is retried before it is left to the start-up sweep. */
const DELETE_PATIENCE_MS = 15_000;
/** How long a runtime that could not signal its container gets before its `run` process is killed. */
const RUNTIME_KILL_GRACE_MS = 3000;
/** The Debian package that provides each runtime, for the error when one is missing. */
const PACKAGE: Record<OciSandboxConfig["runtime"], string> = { runc: "runc", runsc: "runsc" };

const ociOf = (config: FunctionConfig): OciSandboxConfig => sandboxOf(config, "oci");

/**
 * `[oci]`: the function as an OCI bundle run directly by runc or gVisor's runsc, no daemon.
 * Each instance gets a generated config.json (see spec.ts). A handler runs on its built root
 * (rootfs-build.ts: Node, its libraries, the runtime and the function, nothing else), shared
 * read-only by every instance (`rootfs = "shared"`) or under a copy-on-write overlay per instance
 * (`"overlay"`). A `command` comes from the host, so it runs over an empty read-only root into
 * which the host's program directories and the function directory are bind-mounted read-only.
 * Transport: a Unix socket in a bind-mounted directory (`runsc --host-uds=all`); no IP network, so
 * readiness is the socket accepting (callback `ignore`).
 */
export class OciDriver implements SandboxDriver {
  readonly name = "oci";
  readonly capabilities = { snapshot: false, oomDetection: true } as const;
  readonly #bundles = new HandlerBundles();
  readonly #rootfs = new RootfsBuilds();
  /** Built roots in use: how many instances run on each, and the newest root of each function. */
  readonly #rootUsers = new Map<string, { root: BuiltRootfs; users: number }>();
  readonly #currentRoot = new Map<string, string>();

  /**
   * Runtime state directories of Fennec's own: `list` there shows only Fennec's containers. Not
   * inside the run directories' root, whose sweep would take them for debris.
   */
  static stateRoot(runtime: string): string {
    return join(runRoot("oci-state"), runtime);
  }

  static runtimeArgs(runtime: OciSandboxConfig["runtime"]): string[] {
    const base = ["--root", OciDriver.stateRoot(runtime)];
    // --oci-seccomp: without it runsc ignores the spec's seccomp filter inside the sandbox.
    return runtime === "runsc"
      ? [...base, "--network=none", "--platform=ptrace", "--host-uds=all", "--oci-seccomp"]
      : base;
  }

  memoryMiB(config: FunctionConfig): number {
    return ociOf(config).memoryMiB;
  }

  async prepare(config: FunctionConfig): Promise<void> {
    const cfg = ociOf(config);
    if (cfg.handler) await this.rootfs(config);
  }

  /** A handler function's built root (bundle first), once per revision. */
  async rootfs(config: FunctionConfig): Promise<BuiltRootfs> {
    const cfg = ociOf(config);
    if (!cfg.handler) throw new FennecError("INTERNAL", `${config.key} has no handler to build a root for`);
    return this.#rootfs.get(config, await this.#bundles.get(config, cfg.handler));
  }

  /** Counts an instance on a root; the newest root of a function becomes its current one. */
  #acquireRoot(config: FunctionConfig, root: BuiltRootfs): () => Promise<void> {
    const previous = this.#currentRoot.get(config.key);
    this.#currentRoot.set(config.key, root.dir);
    const entry = this.#rootUsers.get(root.dir) ?? { root, users: 0 };
    entry.users++;
    this.#rootUsers.set(root.dir, entry);
    if (previous && previous !== root.dir) void this.#retireRoot(previous);
    let released = false;
    return async () => {
      if (released) return;
      released = true;
      entry.users--;
      await this.#retireRoot(root.dir);
    };
  }

  /** Removes a root nothing runs on once a newer one replaced it (an older revision's). */
  async #retireRoot(dir: string): Promise<void> {
    const entry = this.#rootUsers.get(dir);
    if (!entry || entry.users > 0 || [...this.#currentRoot.values()].includes(dir)) return;
    this.#rootUsers.delete(dir);
    await removeRootfs(entry.root).catch(() => undefined);
  }

  /**
   * Removes containers, overlay mounts, bundles and run directories an earlier crashed run left:
   * those whose owner record (run-dir.ts) names a Fennec that is gone. Several Fennecs may share
   * the state root (parallel test files do): a live one's containers are never touched, and a
   * container with no record is removed only once it has stopped.
   */
  async cleanupStale(): Promise<CleanupReport> {
    const report: CleanupReport = { removed: [], leftAlone: [] };
    for (const runtime of ["runc", "runsc"] as const) {
      if (!existsSync(OciDriver.stateRoot(runtime))) continue;
      let binary: string;
      try {
        binary = findExecutable(runtime, PACKAGE[runtime]);
      } catch {
        continue;
      }
      const runtimeArgs = OciDriver.runtimeArgs(runtime);
      const { stdout } = await run(binary, [...runtimeArgs, "list", "--format", "json"]).catch(() => ({
        stdout: "",
      }));
      let containers: Array<{ id: string; status: string }>;
      try {
        containers = (JSON.parse(stdout.trim() || "[]") ?? []) as typeof containers;
      } catch {
        report.leftAlone.push({
          path: OciDriver.stateRoot(runtime),
          reason: `${runtime} list: ${stdout.slice(0, 200)}`,
        });
        continue;
      }
      for (const { id, status } of containers) {
        const whose = await ownerOf("oci", id);
        if (whose === "live") continue;
        if (whose === "unknown" && status !== "stopped") {
          report.leftAlone.push({ path: `${runtime}:${id}`, reason: `no owner record, and it is ${status}` });
          continue;
        }
        // kill first: this runsc's `delete -f` can drop the state and leave the sandbox running.
        await run(binary, [...runtimeArgs, "kill", id, "KILL"]).catch(() => undefined);
        await run(binary, [...runtimeArgs, "delete", "-f", id]).catch(() => undefined);
        report.removed.push(`${runtime}:${id}`);
      }
    }
    // Their (empty) cgroups, while their owner records still say whose they were.
    await removeNested(CGROUP_PARENT, (id) => ownerOf("oci", id));
    // A gone instance's overlay root is unmounted before its run directory goes, so removing the
    // directory cannot reach into a mounted root.
    const dirs = await sweepStale("oci", {
      beforeRemove: async (_id, dir) => {
        for (const target of await mountPointsUnder(dir))
          if (target.endsWith("/rootfs")) await unmountOverlay(target);
      },
    });
    return mergeReports(report, dirs);
  }

  async close(): Promise<void> {
    await removeNested(CGROUP_PARENT);
  }

  async start(ctx: StartContext): Promise<SandboxHandle> {
    const cfg = ociOf(ctx.config);
    const binary = findExecutable(cfg.runtime, PACKAGE[cfg.runtime]);
    const what = `${ctx.config.key}: instance ${ctx.instanceId} (${cfg.runtime})`;
    // What the instance holds, released newest first when it stops or fails to start.
    const cleanup = new CleanupStack();
    const dir = await createRunDirOn(cleanup, "oci", ctx.instanceId);
    let socketDir: string;
    let binding: HostBinding;
    let argv: string[];
    let rootfs: string;
    const binds: BindMount[] = [];
    try {
      socketDir = await createSocketDir(dir);
      binding = await openBinding(cleanup, socketDir, { sandboxUser: true });
      if (cfg.command) {
        // A host program: an empty root with the host's program directories bound read-only.
        argv = [...cfg.command];
        rootfs = join(dir, "rootfs");
        await mkdir(rootfs);
        binds.push(...systemDirs().map((d) => ({ source: d, destination: d, writable: false })));
        binds.push({ source: ctx.config.dir, destination: INSIDE.functionDir, writable: false });
      } else {
        // A handler: its built root, shared read-only or under a copy-on-write overlay.
        const root = await this.rootfs(ctx.config);
        cleanup.defer(this.#acquireRoot(ctx.config, root));
        argv = [await nodeInside(), INSIDE.runtime, INSIDE.bundle];
        if (cfg.rootfs === "overlay") {
          const overlay = await mountOverlay(root.dir, dir);
          cleanup.defer(() => unmountOverlay(overlay));
          rootfs = overlay;
        } else rootfs = root.dir;
      }
    } catch (err) {
      await cleanup.run();
      throw err;
    }
    binds.push({ source: socketDir, destination: INSIDE.runDir, writable: true });
    const spec = ociSpec({
      args: [...argv, "ignore"],
      env: {
        PATH: "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        HOME: "/tmp",
        TMPDIR: "/tmp",
        ...cfg.env,
        FENNEC_SOCKET: SOCKET_INSIDE,
        FENNEC_HOST_SOCKET: BINDING_INSIDE,
        FENNEC_CALLBACK: "ignore",
        FENNEC_INSTANCE_ID: ctx.instanceId,
      },
      cwd: INSIDE.functionDir,
      rootfs,
      // The overlay's writes land in the instance's own upper layer: the root may be writable.
      readonlyRoot: cfg.command !== undefined || cfg.rootfs === "shared",
      binds,
      memoryBytes: cfg.memoryMiB * 2 ** 20,
      pids: cfg.pids,
      // Relative: runc nests it under its own cgroup in each hierarchy, as Fennec's other groups are.
      cgroupsPath: join(CGROUP_PARENT, ctx.instanceId),
    });
    const runtimeArgs = OciDriver.runtimeArgs(cfg.runtime);
    const runtime = (...args: string[]) =>
      run(binary, [...runtimeArgs, ...args]).then(
        () => true,
        () => false,
      );
    const listed = (id: string) =>
      run(binary, [...runtimeArgs, "list", "--quiet"]).then(
        ({ stdout }) => stdout.split("\n").includes(id),
        () => false,
      );
    try {
      await writeFile(join(dir, "config.json"), JSON.stringify(spec, null, 2));
      await mkdir(OciDriver.stateRoot(cfg.runtime), { recursive: true });
    } catch (err) {
      await cleanup.run();
      throw err;
    }
    cleanup.defer(async () => {
      // runsc may still be finalising a sandbox its `run` process just left (after an OOM kill or a
      // destroy mid-call, for over a second on a busy machine): retry, backing off, until it is gone.
      const giveUpAt = performance.now() + DELETE_PATIENCE_MS;
      for (let wait = 50; ; wait = Math.min(wait * 2, 1000)) {
        await runtime("delete", "-f", ctx.instanceId);
        // `state` can fail for a container the runtime still lists (a lock held, a sandbox half
        // gone): gone means no longer listed.
        if (!(await listed(ctx.instanceId)) || performance.now() > giveUpAt) break;
        await new Promise((r) => setTimeout(r, wait));
      }
      // runsc leaves the container's (empty) cgroups behind; remove them with it.
      await removeNested(join(CGROUP_PARENT, ctx.instanceId));
    });
    // 1. `run` in the foreground: the runtime process lives as long as the container, so its exit
    //    is the container's exit (its status, 128 + n for signal n, the container's).
    const runtimeProcess = spawn(binary, [...runtimeArgs, "run", "--bundle", dir, ctx.instanceId], {
      cwd: dir,
      stdio: ["ignore", "pipe", "pipe"],
    });
    // issue10-unifaas (1/2): a command serving a port is reached through a relay in its namespace.
    const relay =
      cfg.port === undefined
        ? undefined
        : forwardOciPort({
            runtime: cfg.runtime,
            binary,
            runtimeArgs,
            id: ctx.instanceId,
            socketDir,
            port: cfg.port,
            what,
            signal: ctx.signal,
          });
    if (relay) cleanup.defer(() => relay.stop());
    const child = new SupervisedChild({
      child: fromChildProcess(runtimeProcess, {
        statusNamesSignal: true,
        // Signals go to the container through the runtime. One it cannot signal is still being
        // created or already on its way out (a SIGKILL escalating a close): its `run` process is
        // given a grace to finish, since killing it in the middle of deleting the container leaves
        // runsc a container it can no longer delete; only then is the runtime process killed.
        kill: async (sig, direct) => {
          if (!(await runtime("kill", ctx.instanceId, sig.slice(3))) && sig === "SIGKILL")
            setTimeout(() => direct(sig), RUNTIME_KILL_GRACE_MS);
        },
      }),
      what,
      log: ctx.log,
      memoryMiB: cfg.memoryMiB,
      // `run` deletes the container's cgroup, with its OOM count, before it exits; nothing but the
      // kernel's OOM killer SIGKILLs a container Fennec is not stopping (runsc's sandbox included).
      oomKilled: (exit) => exit.signal === "SIGKILL",
      cleanup,
    });
    // 2. Race the socket accepting against the container exiting and the start deadline (and a
    //    relay dying: issue10-unifaas 2/2); once ready, the socket is moved out of the container's reach.
    return readyOnSocket(child, { dir, socketDir, binding }, ctx, relay?.failed);
  }
}
