import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { FennecError } from "../../../core/errors.js";
import type { InvokeRequest, InvokeResponse } from "../../../core/types.js";
import type { FunctionConfig, ProcessSandboxConfig } from "../../../config/function-config.js";
import type { InvokeContext, SandboxDriver, SandboxHandle, StartContext } from "../../contract.js";
import { HttpTransport, type Endpoint } from "../../http-transport.js";
import { createRunDir, recordOwner, sweepStale } from "../../run-dir.js";
import { buildHandler, HANDLER_RUNTIME } from "./handler-build.js";

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
 * `[process]`: the function as a plain child process serving HTTP — the development backend and
 * the baseline the isolating drivers are measured against. Either a `command` of the user's, or a
 * fetch-style `handler` bundled with esbuild and served by Fennec's handler runtime. The UniFaaS guest contract: the
 * callback URL is the last argument (and FENNEC_CALLBACK), the instance calls it once it serves
 * on the Unix socket in FENNEC_SOCKET (or 127.0.0.1:$PORT with `transport = "tcp"`).
 * No isolation beyond being another process: that is what `oci` and `vm` are for.
 */
export class ProcessDriver implements SandboxDriver {
  readonly name = "process";
  readonly capabilities = { memoryLimit: false, snapshot: false, outOfProcess: true } as const;
  /** Built handler bundles by function revision (the revision covers the handler file's stamp). */
  readonly #bundles = new Map<string, Promise<string>>();

  /** Builds a handler function's bundle (once per revision); nothing to do for a command. */
  async prepare(config: FunctionConfig): Promise<void> {
    await this.#command(config);
  }

  #command(config: FunctionConfig): Promise<readonly string[]> {
    const cfg = processOf(config);
    if (cfg.command) return Promise.resolve(cfg.command);
    const key = `${config.key}@${config.revision}`;
    let bundle = this.#bundles.get(key);
    if (!bundle) {
      bundle = buildHandler(config, cfg.handler!);
      this.#bundles.set(key, bundle);
      bundle.catch(() => this.#bundles.delete(key));
    }
    return bundle.then((b) => [process.execPath, HANDLER_RUNTIME, b]);
  }

  memoryMiB(config: FunctionConfig): number {
    return processOf(config).memoryMiB;
  }

  async cleanupStale(): Promise<void> {
    await sweepStale(this.name);
  }

  async start(ctx: StartContext): Promise<SandboxHandle> {
    const cfg = processOf(ctx.config);
    const command = await this.#command(ctx.config);
    const what = `${ctx.config.key}: instance ${ctx.instanceId}`;
    const dir = await createRunDir(this.name, ctx.instanceId);
    let endpoint: Endpoint;
    const env: Record<string, string> = {
      PATH: process.env["PATH"] ?? "/usr/bin:/bin",
      HOME: dir,
      TMPDIR: dir,
      ...cfg.env,
      FENNEC_CALLBACK: ctx.callbackUrl,
      FENNEC_INSTANCE_ID: ctx.instanceId,
    };
    if (cfg.transport === "unix") {
      endpoint = { socketPath: join(dir, "http.sock") };
      env["FENNEC_SOCKET"] = endpoint.socketPath;
    } else {
      endpoint = { host: "127.0.0.1", port: await freePort() };
      env["PORT"] = String(endpoint.port);
    }
    // 1. Start the child in its own process group, so stopping it stops everything it started.
    let child: ChildProcess;
    try {
      child = spawn(command[0]!, [...command.slice(1), ctx.callbackUrl], {
        cwd: ctx.config.dir,
        env,
        detached: true,
        stdio: ["ignore", "pipe", "pipe"],
      });
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw new FennecError(
        "SANDBOX_START_FAILED",
        `${what}: cannot start ${command[0]}: ${(err as Error).message}`,
      );
    }
    const instance = new ProcessInstance(child, dir, new HttpTransport(endpoint, what), what);
    // 2. Race readiness (the callback) against the child exiting or failing to spawn, and the deadline.
    try {
      await new Promise<void>((resolve, reject) => {
        child.once("error", (err) =>
          reject(
            new FennecError("SANDBOX_START_FAILED", `${what}: cannot start ${command[0]}: ${err.message}`),
          ),
        );
        instance.onExit((err) => reject(err));
        ctx.waitForCallback().then(resolve, reject);
      });
      if (child.pid !== undefined) await recordOwner(dir, child.pid);
    } catch (err) {
      await instance.destroy();
      throw err;
    }
    return instance;
  }
}

/** One child process and its run directory. */
class ProcessInstance implements SandboxHandle {
  readonly #child: ChildProcess;
  readonly #dir: string;
  readonly #transport: HttpTransport;
  readonly #what: string;
  readonly #exited: Promise<void>;
  readonly #exitListeners: Array<(reason: Error) => void> = [];
  #output = "";
  #stopping = false;

  constructor(child: ChildProcess, dir: string, transport: HttpTransport, what: string) {
    this.#child = child;
    this.#dir = dir;
    this.#transport = transport;
    this.#what = what;
    const keep = (chunk: Buffer) => (this.#output = (this.#output + chunk.toString()).slice(-OUTPUT_TAIL));
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    this.#exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        if (!this.#stopping) {
          const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
          const tail = this.#output.trim().slice(-500);
          const err = new FennecError(
            "FN_CRASHED",
            `${this.#what} ${how}${tail ? ` (output: ${tail})` : ""}`,
          );
          for (const l of this.#exitListeners) l(err);
        }
        resolve();
      });
      child.once("error", () => resolve());
    });
  }

  onExit(listener: (reason: Error) => void): void {
    this.#exitListeners.push(listener);
  }

  invoke(request: InvokeRequest, ctx: InvokeContext): Promise<InvokeResponse> {
    return this.#transport.invoke(request, ctx.signal);
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
    this.#signal("SIGTERM");
    const timer = setTimeout(() => this.#signal("SIGKILL"), CLOSE_GRACE_MS);
    await this.#exited;
    clearTimeout(timer);
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
    await rm(this.#dir, { recursive: true, force: true });
  }
}
