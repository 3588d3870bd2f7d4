import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { chmod, mkdir, stat, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { FennecError } from "../../../core/errors.js";
import type { InvokeRequest, InvokeResponse } from "../../../core/types.js";
import type { FunctionConfig, ProcessSandboxConfig } from "../../../config/function-config.js";
import { Cgroup, removeParents, sweepCgroups } from "../../cgroups.js";
import type {
  CleanupReport,
  InvokeContext,
  SandboxDriver,
  SandboxHandle,
  StartContext,
} from "../../contract.js";
import { terminate } from "../../terminate.js";
import { HttpTransport, type Endpoint } from "../../http-transport.js";
import {
  createRunDir,
  mergeReports,
  ownerOf,
  recordOwner,
  removeRunDir,
  runRoot,
  sweepStale,
} from "../../run-dir.js";
import { waitForSocket } from "../../wait-socket.js";
import { HANDLER_RUNTIME, HandlerBundles } from "../../handler-build.js";
import { INSIDE } from "../../host-view.js";
import { giveToSandboxUser, SANDBOX_USER, takeSocket } from "../../unprivileged.js";
import { bwrapArgs, dropRootArgs, findBwrap, findSetpriv, JOIN_CGROUPS_THEN_EXEC } from "./bubblewrap.js";
import { denyListFilter } from "./seccomp.js";

/** How long a closing instance gets after SIGTERM before SIGKILL. */
const CLOSE_GRACE_MS = 3000;
const OUTPUT_TAIL = 4096;

function processOf(config: FunctionConfig): ProcessSandboxConfig {
  if (config.sandbox.kind !== "process")
    throw new FennecError("INTERNAL", `${config.key} is not a process function`);
  return config.sandbox;
}

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
  readonly capabilities = { memoryLimit: true, snapshot: false, outOfProcess: true } as const;
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
    return [process.execPath, INSIDE.runtime, INSIDE.bundle];
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
    const dir = await createRunDir(this.name, ctx.instanceId);
    let cgroup: Cgroup | undefined;
    try {
      if (cfg.isolate)
        cgroup = await Cgroup.create(ctx.instanceId, { memoryMiB: cfg.memoryMiB, pids: cfg.pids });
    } catch (err) {
      await removeRunDir(dir);
      throw err;
    }
    if (cgroup) this.#live.add(ctx.instanceId);
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
    // An isolated instance makes its socket in a directory of its own (the only host directory it
    // may write); once it is ready Fennec moves the socket into the run directory, out of reach.
    const socketPath = join(dir, "http.sock");
    const socketDir = join(dir, "sock");
    const boundSocket = cfg.isolate ? join(socketDir, "http.sock") : socketPath;
    if (cfg.transport === "unix") {
      endpoint = { socketPath };
      env["FENNEC_SOCKET"] = cfg.isolate ? join(INSIDE.runDir, "http.sock") : socketPath;
    } else {
      endpoint = { host: "127.0.0.1", port: await freePort() };
      env["PORT"] = String(endpoint.port);
    }
    // 1. Start the child in its own process group, so stopping it stops everything it started;
    //    an isolated one joins its cgroups first, drops root (setpriv), then becomes bwrap, then
    //    the function. What bwrap binds it gets as descriptors 3-6, opened here as root.
    let file = argv[0]!;
    let args = [...argv.slice(1), callback];
    const fds: number[] = [];
    try {
      if (bwrap && cgroup) {
        await assertReachableBySandboxUser(ctx.config.dir, what);
        await allowTraversal(dir, this.name);
        await mkdir(socketDir);
        await giveToSandboxUser(socketDir);
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
    } catch (err) {
      for (const fd of fds) closeSync(fd);
      await cgroup?.remove();
      this.#live.delete(ctx.instanceId);
      await removeRunDir(dir);
      throw err;
    }
    let child: ChildProcess;
    try {
      child = spawn(file, args, {
        cwd: ctx.config.dir,
        env,
        detached: true,
        stdio: ["ignore", "pipe", "pipe", ...fds],
      });
    } finally {
      for (const fd of fds) closeSync(fd);
    }
    const instance = new ProcessInstance(
      child,
      dir,
      cgroup,
      new HttpTransport(endpoint, what),
      what,
      cfg.memoryMiB,
      () => this.#live.delete(ctx.instanceId),
    );
    // Recorded at once (alongside the start), so a Fennec that dies while the instance starts
    // leaves a child that the next start's sweep can find and end.
    const recorded = child.pid === undefined ? undefined : recordOwner(dir, child.pid).catch(() => undefined);
    // 2. Race readiness against the child exiting or failing to spawn, and the start deadline.
    // Polling the socket stops when the start settles, whichever way it does.
    const settled = new AbortController();
    try {
      await new Promise<void>((resolve, reject) => {
        child.once("error", (err) =>
          reject(new FennecError("SANDBOX_START_FAILED", `${what}: cannot start ${argv[0]}: ${err.message}`)),
        );
        instance.onExit((err) => reject(err));
        const ready = cfg.isolate
          ? waitForSocket(boundSocket, AbortSignal.any([ctx.signal, settled.signal]))
          : ctx.waitForCallback();
        ready.then(resolve, reject);
      }).finally(() => settled.abort());
      await recorded;
      if (cfg.isolate && cfg.transport === "unix") await takeSocket(boundSocket, socketPath, what);
    } catch (err) {
      await recorded;
      await instance.destroy();
      throw err;
    }
    return instance;
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

/** One child process, its run directory and (when isolated) its cgroup. */
class ProcessInstance implements SandboxHandle {
  readonly #child: ChildProcess;
  readonly #dir: string;
  readonly #cgroup: Cgroup | undefined;
  readonly #transport: HttpTransport;
  readonly #what: string;
  readonly #memoryMiB: number;
  readonly #onReleased: () => void;
  readonly #exited: Promise<void>;
  readonly #exitListeners: Array<(reason: Error) => void> = [];
  #output = "";
  #stopping = false;

  constructor(
    child: ChildProcess,
    dir: string,
    cgroup: Cgroup | undefined,
    transport: HttpTransport,
    what: string,
    memoryMiB: number,
    onReleased: () => void,
  ) {
    this.#child = child;
    this.#dir = dir;
    this.#cgroup = cgroup;
    this.#transport = transport;
    this.#what = what;
    this.#memoryMiB = memoryMiB;
    this.#onReleased = onReleased;
    const keep = (chunk: Buffer) => (this.#output = (this.#output + chunk.toString()).slice(-OUTPUT_TAIL));
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    this.#exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        if (!this.#stopping) {
          const err = this.#exitError(code, signal);
          for (const l of this.#exitListeners) l(err);
        }
        resolve();
      });
      child.once("error", () => resolve());
    });
  }

  #exitError(code: number | null, signal: NodeJS.Signals | null): FennecError {
    if (this.#cgroup?.oomKilled()) {
      return new FennecError(
        "FN_OOM",
        `${this.#what} exceeded its memory limit of ${this.#memoryMiB} MiB and was killed`,
      );
    }
    const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
    const tail = this.#output.trim().slice(-500);
    return new FennecError("FN_CRASHED", `${this.#what} ${how}${tail ? ` (output: ${tail})` : ""}`);
  }

  onExit(listener: (reason: Error) => void): void {
    this.#exitListeners.push(listener);
  }

  async invoke(request: InvokeRequest, ctx: InvokeContext): Promise<InvokeResponse> {
    try {
      return await this.#transport.invoke(request, ctx.signal);
    } catch (err) {
      // A connection that broke because the kernel killed the function for memory is FN_OOM.
      if (err instanceof FennecError && err.code === "FN_CRASHED" && this.#cgroup) {
        await Promise.race([this.#exited, new Promise((r) => setTimeout(r, 200))]);
        if (this.#cgroup.oomKilled()) throw this.#exitError(null, "SIGKILL");
      }
      throw err;
    }
  }

  #signal(sig: NodeJS.Signals): void {
    if (this.#child.pid === undefined || this.#child.exitCode !== null || this.#child.signalCode !== null)
      return;
    try {
      process.kill(-this.#child.pid, sig);
    } catch {
      // the group is already gone
    }
  }

  async close(): Promise<void> {
    this.#stopping = true;
    await terminate((sig) => this.#signal(sig), this.#exited, CLOSE_GRACE_MS);
    await this.#release();
  }

  async destroy(): Promise<void> {
    this.#stopping = true;
    this.#signal("SIGKILL");
    await this.#exited;
    await this.#release();
  }

  async #release(): Promise<void> {
    this.#transport.close();
    await this.#cgroup?.remove();
    this.#onReleased();
    await removeRunDir(this.#dir);
  }
}
