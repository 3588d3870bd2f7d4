import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { chmod, stat, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { FennecError } from "../../../core/errors.js";
import type { FunctionConfig, ProcessSandboxConfig } from "../../../config/function-config.js";
import { sandboxOf } from "../../../config/sandbox-table.js";
import { Cgroup, removeParents, sweepCgroups } from "../../cgroups.js";
import { CleanupStack } from "../../cleanup-stack.js";
import type { CleanupReport, SandboxDriver, SandboxHandle, StartContext } from "../../contract.js";
import type { Endpoint } from "../../http-transport.js";
import { createRunDirOn, mergeReports, ownerOf, recordOwner, runRoot, sweepStale } from "../../run-dir.js";
import { fromChildProcess, SupervisedChild } from "../../supervised-child.js";
import { SupervisedHandle } from "../../supervised-handle.js";
import { HANDLER_RUNTIME, HandlerBundles } from "../../handler-build.js";
import { INSIDE } from "../../host-view.js";
import { SANDBOX_USER } from "../../unprivileged.js";
import { BINDING_INSIDE, createSocketDir, readyOnSocket, SOCKET_INSIDE } from "../../socket-dir.js";
import { BINDING_SOCKET, openBinding, type HostBinding } from "../../host-binding.js";
import { bwrapArgs, dropRootArgs, findBwrap, findSetpriv, JOIN_CGROUPS_THEN_EXEC } from "./bubblewrap.js";
import { denyListFilter } from "./seccomp.js";

const processOf = (config: FunctionConfig): ProcessSandboxConfig => sandboxOf(config, "process");

/** A free loopback port for `transport = "tcp"` (the kernel picks; the instance binds it next). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * `[process]`: the function as a child process serving HTTP — the development backend and the
 * baseline the other drivers are measured against. Either a `command` of the user's, or a
 * fetch-style `handler` bundled with esbuild and served by Fennec's handler runtime. UniFaaS guest
 * contract: the callback URL is the last argument (and FENNEC_CALLBACK); the instance calls it once
 * it serves on the Unix socket in FENNEC_SOCKET (or 127.0.0.1:$PORT with `transport = "tcp"`).
 * With `isolate = true` it runs inside bubblewrap namespaces with cgroup memory and pids limits;
 * having no network, it gets the callback `ignore` and is ready once its socket accepts.
 */
export class ProcessDriver implements SandboxDriver {
  readonly name = "process";
  readonly capabilities = { snapshot: false, oomDetection: true } as const;
  readonly #bundles = new HandlerBundles();
  /** This driver's live instances with a cgroup (the `fennec/` parent is removed when none is left). */
  readonly #live = new Set<string>();

  /** Builds a handler function's bundle (once per revision); nothing to do for a command. */
  async prepare(config: FunctionConfig): Promise<void> {
    const cfg = processOf(config);
    if (cfg.handler) await this.#bundles.get(config, cfg.handler);
  }

  /** The argv to run, with paths as the process will see them. */
  async #argv(config: FunctionConfig): Promise<string[]> {
    const cfg = processOf(config);
    if (cfg.command) return [...cfg.command];
    const bundle = await this.#bundles.get(config, cfg.handler!);
    if (!cfg.isolate) return [process.execPath, HANDLER_RUNTIME, bundle];
    return [process.execPath, youngGeneration(cfg.memoryMiB), INSIDE.runtime, INSIDE.bundle];
  }

  memoryMiB(config: FunctionConfig): number {
    return processOf(config).memoryMiB;
  }

  /**
   * Groups first: a gone Fennec's group holds every process its instance started, even one that
   * left the process group; then the run directories (and any child still running outside a group).
   */
  async cleanupStale(): Promise<CleanupReport> {
    const groups = await sweepCgroups((id) => ownerOf(this.name, id)).catch((err: Error): CleanupReport => ({
      removed: [],
      leftAlone: [{ path: "cgroups", reason: err.message }],
    }));
    return mergeReports(groups, await sweepStale(this.name));
  }

  async close(): Promise<void> {
    if (this.#live.size === 0) await removeParents();
  }

  async start(ctx: StartContext): Promise<SandboxHandle> {
    const cfg = processOf(ctx.config);
    const what = `${ctx.config.key}: instance ${ctx.instanceId}`;
    const argv = await this.#argv(ctx.config);
    const bwrap = cfg.isolate ? findBwrap() : undefined;
    // What the instance holds, released newest first when it stops or fails to start.
    const cleanup = new CleanupStack();
    const dir = await createRunDirOn(cleanup, this.name, ctx.instanceId);
    let cgroup: Cgroup | undefined;
    const callback = cfg.isolate ? "ignore" : ctx.callbackUrl;
    const env: Record<string, string> = {
      PATH: process.env["PATH"] ?? "/usr/bin:/bin",
      HOME: cfg.isolate ? "/tmp" : dir,
      TMPDIR: cfg.isolate ? "/tmp" : dir,
      ...cfg.env,
      FENNEC_CALLBACK: callback,
      FENNEC_INSTANCE_ID: ctx.instanceId,
    };
    let endpoint: Endpoint;
    const socketPath = join(dir, "http.sock");
    // An isolated instance makes its socket in a directory of its own (socket-dir.ts).
    let socketDir: string | undefined;
    // 1. Start the child in its own process group, so stopping it stops everything it started;
    //    an isolated one joins its cgroups first, drops root (setpriv), then becomes bwrap, then
    //    the function. What bwrap binds it gets as descriptors 3-6, opened here as root.
    let file = argv[0]!;
    let args = [...argv.slice(1), callback];
    const fds: number[] = [];
    let binding: HostBinding;
    try {
      if (cfg.isolate) {
        const group = await Cgroup.create(ctx.instanceId, { memoryMiB: cfg.memoryMiB, pids: cfg.pids });
        cgroup = group;
        this.#live.add(ctx.instanceId);
        cleanup.defer(async () => {
          await group.remove();
          this.#live.delete(ctx.instanceId);
        });
      }
      if (cfg.transport === "unix") {
        endpoint = { socketPath };
        env["FENNEC_SOCKET"] = cfg.isolate ? SOCKET_INSIDE : socketPath;
      } else {
        endpoint = { host: "127.0.0.1", port: await freePort() };
        env["PORT"] = String(endpoint.port);
      }
      if (bwrap && cgroup) {
        await assertReachableBySandboxUser(ctx.config.dir, what);
        await allowTraversal(dir, this.name);
        socketDir = await createSocketDir(dir);
        await writeFile(join(dir, "seccomp.bpf"), denyListFilter());
        env["FENNEC_CGROUP_PROCS"] = cgroup.procsFiles.join(" ");
        const runtime = cfg.handler ? HANDLER_RUNTIME : undefined;
        for (const path of [ctx.config.dir, socketDir, join(dir, "seccomp.bpf"), runtime])
          if (path) fds.push(openSync(path, "r"));
        args = [
          "-c",
          JOIN_CGROUPS_THEN_EXEC,
          "sh",
          findSetpriv(),
          ...dropRootArgs(),
          bwrap,
          ...bwrapArgs({ functionDir: 3, socketDir: 4, seccomp: 5, runtime: runtime ? 6 : undefined }),
          "--",
          ...argv,
          callback,
        ];
        file = "/bin/sh";
      }
      // The handler binding: a socket beside the function's own, in the directory it already has.
      binding = await openBinding(cleanup, socketDir ?? dir, { sandboxUser: socketDir !== undefined });
      env["FENNEC_HOST_SOCKET"] = socketDir ? BINDING_INSIDE : join(dir, BINDING_SOCKET);
    } catch (err) {
      for (const fd of fds) closeSync(fd);
      await cleanup.run();
      throw err;
    }
    let spawned: ChildProcess;
    try {
      spawned = spawn(file, args, {
        cwd: ctx.config.dir,
        env,
        detached: true,
        stdio: ["ignore", "pipe", "pipe", ...fds],
      });
    } finally {
      for (const fd of fds) closeSync(fd);
    }
    const group = cgroup;
    const child = new SupervisedChild({
      child: fromChildProcess(spawned, { group: true }),
      what,
      log: ctx.log,
      memoryMiB: cfg.memoryMiB,
      // Only an isolated instance has a limit, and its cgroup counts the kernel's OOM kills.
      ...(group ? { oomKilled: () => group.oomKilled() } : {}),
      cleanup,
    });
    // Recorded before anything can remove the run directory, so a Fennec that dies while the
    // instance starts leaves a child that the next start's sweep can find and end.
    if (spawned.pid !== undefined) await recordOwner(dir, spawned.pid).catch(() => undefined);
    // 2. Race readiness against the child exiting or failing to spawn, and the start deadline.
    // An isolated one is ready once its socket accepts; then its socket is taken out of its reach.
    if (socketDir) return readyOnSocket(child, { dir, socketDir, binding }, ctx);
    return SupervisedHandle.ready(child, endpoint, { kind: "callback" }, ctx, binding);
  }
}

/**
 * Lets others (the sandbox's uid) walk, not list, the run directories down to `dir`: bwrap runs
 * unprivileged and resolves the directory it binds by path. Nothing in them is readable by name
 * but the instance's own socket directory (0700, the sandbox's) and owner records.
 */
async function allowTraversal(dir: string, driver: string): Promise<void> {
  for (const d of [dirname(runRoot(driver)), runRoot(driver), dir]) {
    const mode = (await stat(d)).mode & 0o7777;
    if ((mode & 0o001) === 0) await chmod(d, mode | 0o001);
  }
}

/**
 * bwrap runs as the sandbox's uid and binds the function directory by path (even when handed a
 * descriptor), so that uid must be able to search every directory down to it. Refused here with
 * the fix, rather than as bwrap's bare "Permission denied" on /proc/self/fd/3.
 */
async function assertReachableBySandboxUser(functionDir: string, what: string): Promise<void> {
  for (let d = functionDir; ; d = dirname(d)) {
    const mode = (await stat(d)).mode;
    if ((mode & 0o001) === 0)
      throw new FennecError(
        "SANDBOX_START_FAILED",
        `${what}: an isolated function runs as uid ${SANDBOX_USER.uid}, which cannot reach its directory: ` +
          `${d === functionDir ? "the function directory" : "a directory above it"} is not searchable by ` +
          `others (chmod o+x ${d})`,
      );
    if (d === dirname(d)) return;
  }
}

/**
 * V8's young generation for a handler runtime inside a memory limit. Node sizes its heap from
 * the cgroup's limit, and V8 its young generation from the heap: under 256 MiB that leaves
 * semi-spaces of 1-2 MiB against 16 MiB unlimited, so a handler answering a stream of small
 * requests spent ≈ 40 % more CPU scavenging (measured, docs/benchmarks.md). A sixteenth of the
 * limit per semi-space (capped at Node's own 16 MiB) gives that back while the young generation
 * (three semi-spaces at most) stays under a fifth of the limit.
 */
function youngGeneration(memoryMiB: number): string {
  return `--max-semi-space-size=${Math.max(1, Math.min(16, Math.floor(memoryMiB / 16)))}`;
}
