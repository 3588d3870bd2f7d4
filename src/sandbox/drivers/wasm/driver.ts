import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Worker } from "node:worker_threads";
import { FennecError, type ErrorCode } from "../../../core/errors.js";
import type { InvokeRequest, InvokeResponse } from "../../../core/types.js";
import type { FunctionConfig, WasmSandboxConfig } from "../../../config/function-config.js";
import type { SandboxDriver, SandboxHandle, StartContext } from "../../contract.js";
import { ExecutorPool } from "./executor-pool.js";
import { ModuleCache } from "./module-cache.js";
import type { DirTree, FromWorker, Outcome, ResultMessage } from "./protocol.js";
import { parseWagiOutput, wagiEnvironment } from "./wagi.js";

export interface WasmDriverOptions {
  /** Directory of the on-disk module cache; undefined keeps the cache in memory only. */
  readonly cacheDir?: string | undefined;
  /** Blank worker threads kept ready for cold starts. */
  readonly spareWorkers?: number;
  /** Largest response a module may write to stdout. */
  readonly maxOutputBytes?: number;
}

/** Memory a worker thread itself costs, beyond the module's linear memory (measured: bench/). */
const WORKER_OVERHEAD_MIB = 8;
/** Largest granted directory, so a grant cannot pull a whole disk into memory. */
const MAX_GRANTED_BYTES = 64 * 2 ** 20;

const OUTCOME_CODES: Record<Exclude<Outcome, "ok">, ErrorCode> = {
  exit: "FN_EXIT",
  trap: "FN_TRAP",
  oom: "FN_OOM",
  "output-too-large": "FN_BAD_RESPONSE",
  "instantiate-failed": "FN_BAD_MODULE",
};

function wasmOf(config: FunctionConfig): WasmSandboxConfig {
  if (config.sandbox.kind !== "wasm")
    throw new FennecError("INTERNAL", `${config.key} is not a wasm function`);
  return config.sandbox;
}

async function readTree(dir: string, budget: { left: number }): Promise<DirTree> {
  const tree: DirTree = {};
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = join(dir, entry.name);
    if (entry.isDirectory()) tree[entry.name] = await readTree(full, budget);
    else if (entry.isFile()) {
      budget.left -= (await stat(full)).size;
      if (budget.left < 0)
        throw new FennecError(
          "FN_CONFIG_INVALID",
          `granted directory ${dir} holds more than ${MAX_GRANTED_BYTES / 2 ** 20} MiB`,
        );
      tree[entry.name] = await readFile(full);
    }
  }
  return tree;
}

/**
 * The embedded default sandbox: WASI preview1 modules following WAGI, one worker thread per
 * instance so a runaway function is stopped by terminating its thread, never stalling the gateway.
 * No filesystem unless `[wasm] dirs` grants one (read-only), and no network at all.
 */
export class WasmDriver implements SandboxDriver {
  readonly name = "wasm";
  readonly capabilities = { memoryLimit: true, snapshot: false, outOfProcess: false } as const;
  readonly modules: ModuleCache;
  readonly #executors: ExecutorPool;
  readonly #maxOutputBytes: number;

  constructor(opts: WasmDriverOptions = {}) {
    this.modules = new ModuleCache(opts.cacheDir);
    this.#executors = new ExecutorPool(opts.spareWorkers ?? 2);
    this.#maxOutputBytes = opts.maxOutputBytes ?? 32 * 2 ** 20;
  }

  memoryMiB(config: FunctionConfig): number {
    return wasmOf(config).memoryMiB + WORKER_OVERHEAD_MIB;
  }

  async prepare(config: FunctionConfig): Promise<void> {
    const wasm = wasmOf(config);
    await this.modules.forRevision(wasm.module, config.revision, wasm.memoryMiB, config.file);
  }

  async start(ctx: StartContext): Promise<SandboxHandle> {
    const wasm = wasmOf(ctx.config);
    const compiled = await this.modules.forRevision(
      wasm.module,
      ctx.config.revision,
      wasm.memoryMiB,
      ctx.config.file,
    );
    const budget = { left: MAX_GRANTED_BYTES };
    const dirs: Record<string, DirTree> = {};
    for (const [guest, host] of Object.entries(wasm.dirs)) dirs[guest] = await readTree(host, budget);
    const worker = this.#executors.take();
    const handle = new WasmInstance(worker, ctx.config, this.#executors);
    try {
      await handle.load(compiled.module, compiled.maxMemoryBytes, dirs, this.#maxOutputBytes, ctx.signal);
    } catch (err) {
      await handle.destroy();
      throw err;
    }
    return handle;
  }

  async close(): Promise<void> {
    await this.#executors.close();
  }
}

interface Pending {
  resolve: (r: ResultMessage) => void;
  reject: (e: Error) => void;
}

/** One wasm instance: a worker thread holding the compiled module. */
class WasmInstance implements SandboxHandle {
  readonly #worker: Worker;
  readonly #config: FunctionConfig;
  readonly #executors: ExecutorPool;
  readonly #pending = new Map<number, Pending>();
  readonly #exitListeners: Array<(reason: Error) => void> = [];
  #nextId = 1;
  #gone: Error | undefined;
  #released = false;
  #onReady: ((msg: FromWorker) => void) | undefined;

  constructor(worker: Worker, config: FunctionConfig, executors: ExecutorPool) {
    this.#worker = worker;
    this.#config = config;
    this.#executors = executors;
    worker.on("message", (msg: FromWorker) => {
      if (msg.type === "result") {
        const p = this.#pending.get(msg.id);
        this.#pending.delete(msg.id);
        p?.resolve(msg);
      } else if (msg.type !== "booted") {
        this.#onReady?.(msg);
      }
    });
    worker.on("error", (err) => this.#died(err));
    worker.on("exit", (code) => this.#died(new Error(`worker thread exited with code ${code}`)));
  }

  #died(err: Error): void {
    if (this.#gone) return;
    const oom = (err as NodeJS.ErrnoException).code === "ERR_WORKER_OUT_OF_MEMORY";
    this.#gone = new FennecError(
      oom ? "FN_OOM" : "FN_CRASHED",
      `${this.#config.key}: sandbox died: ${err.message}`,
    );
    for (const p of this.#pending.values()) p.reject(this.#gone);
    this.#pending.clear();
    for (const l of this.#exitListeners) l(this.#gone);
  }

  load(
    module: WebAssembly.Module,
    maxMemoryBytes: number,
    dirs: Record<string, DirTree>,
    maxOutputBytes: number,
    signal: AbortSignal,
  ): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => reject(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
      this.#onReady = (msg) => {
        signal.removeEventListener("abort", onAbort);
        this.#onReady = undefined;
        if (msg.type === "ready") resolve();
        else if (msg.type === "load-failed") {
          const code = msg.outcome === "oom" ? "FN_OOM" : "FN_BAD_MODULE";
          reject(new FennecError(code, `${this.#config.key}: cannot instantiate the module: ${msg.message}`));
        }
      };
      this.#worker.postMessage({ type: "load", module, maxMemoryBytes, dirs, maxOutputBytes });
    });
  }

  async invoke(request: InvokeRequest): Promise<InvokeResponse> {
    if (this.#gone) throw this.#gone;
    const id = this.#nextId++;
    const env = wagiEnvironment(request, `/invoke/${this.#config.id.name}`, wasmOf(this.#config).env);
    const result = await new Promise<ResultMessage>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      // A body from the socket is a view into a larger pooled buffer, and structured clone would
      // copy all of it: copy just the bytes into their own buffer and transfer that.
      const body = new Uint8Array(request.body);
      this.#worker.postMessage({ type: "invoke", id, env, body }, [body.buffer]);
    });
    if (result.outcome === "ok") return parseWagiOutput(result.stdout);
    const code = OUTCOME_CODES[result.outcome];
    const detail =
      result.outcome === "exit"
        ? `exited with code ${result.exitCode}`
        : result.outcome === "output-too-large"
          ? "wrote a response larger than the limit"
          : result.message;
    const stderr = result.stderrTail.trim();
    throw new FennecError(
      code,
      `${this.#config.key}: ${detail}${stderr ? ` (stderr: ${stderr.slice(-500)})` : ""}`,
      {
        details: { exitCode: result.exitCode, stderr: result.stderrTail },
      },
    );
  }

  onExit(listener: (reason: Error) => void): void {
    this.#exitListeners.push(listener);
  }

  async close(): Promise<void> {
    if (this.#gone) return;
    this.#gone = new FennecError("INSTANCE_GONE", "instance closed");
    this.#released = true;
    // A worker that only ever ran memory-safe wasm and ended cleanly can host the next instance.
    this.#executors.give(this.#worker);
  }

  async destroy(): Promise<void> {
    if (!this.#gone) this.#gone = new FennecError("INSTANCE_GONE", "instance destroyed");
    // A worker already handed back by close() belongs to the pool now: never kill it from here.
    if (this.#released) return;
    await this.#worker.terminate();
  }
}
