import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { readBody, takeWhole, WHOLE_BODY_BYTES, WholeBody } from "../../../core/body.js";
import { FennecError, type ErrorCode } from "../../../core/errors.js";
import type { CallHost } from "../../../core/call-host.js";
import type { InvokeRequest, InvokeResponse } from "../../../core/types.js";
import type { FunctionConfig, WasmSandboxConfig } from "../../../config/function-config.js";
import { sandboxOf } from "../../../config/sandbox-table.js";
import { publishCallOutput } from "../../call-log.js";
import type { InvokeContext, SandboxDriver, SandboxHandle, StartContext } from "../../contract.js";
import { ExecutorPool, type Job } from "./executor-pool.js";
import { ModuleCache, type CompiledModule } from "./module-cache.js";
import { fastPathCounts, InlineRunner, INLINE_MAX_MEMORY, type FastPathCounts } from "./inline-runner.js";
import type { DirTree, DoneMessage, LoadPayload, Outcome } from "./protocol.js";
import type { Snapshot } from "./snapshot.js";
import { MAX_HEAD, parseWagiHead, wagiEnvironment, wagiHeadEnd } from "./wagi.js";
import type { RunResult } from "./wasi-run.js";

/** A request whose body may still be arriving. */
export interface WasmRequest extends Omit<InvokeRequest, "body"> {
  readonly body: Uint8Array | Readable;
}

/** A response whose body streams as the module writes it. */
export interface StreamingResponse extends Omit<InvokeResponse, "body"> {
  readonly body: Readable;
}

export interface WasmDriverOptions {
  /** Directory of the on-disk module cache; undefined keeps the cache in memory only. */
  readonly cacheDir?: string | undefined;
  /** Idle executor threads kept booted for cold starts. */
  readonly spareExecutors?: number;
  /** Most executor threads. */
  readonly maxExecutors?: number | undefined;
  /**
   * Largest response a module may write to stdout (counted as it streams), for functions that
   * set no `max-response-body` of their own.
   */
  readonly maxOutputBytes?: number;
  /**
   * A call's slice on the main thread (inline-runner.ts): it moves to an executor after at most
   * two, so other functions' calls wait at most about that long behind it.
   */
  readonly inlineSliceMs?: number;
}

/**
 * What one running copy costs beyond linear memory: its instance, WASI state and captured
 * output's bookkeeping (measured well under this for the examples).
 */
const COPY_OVERHEAD_MIB = 2;
/** The default `inlineSliceMs`. */
const INLINE_SLICE_MS = 2;
/** Largest input a Faasm function reads whole, for functions without a `max-request-body` of their own. */
const WHOLE_FAASM_INPUT_BYTES = 64 * 2 ** 20;
/** Largest granted directory, so a grant cannot pull a whole disk into memory. */
const MAX_GRANTED_BYTES = 64 * 2 ** 20;

const OUTCOME_CODES: Record<Exclude<Outcome, "ok">, ErrorCode> = {
  // The host call's own code replaces this one (see #check).
  "host-error": "FN_TRAP",
  exit: "FN_EXIT",
  trap: "FN_TRAP",
  oom: "FN_OOM",
  "output-too-large": "FN_RESPONSE_TOO_LARGE",
  "instantiate-failed": "FN_BAD_MODULE",
};

const wasmOf = (config: FunctionConfig): WasmSandboxConfig => sandboxOf(config, "wasm");

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
 * The embedded default sandbox: WASI preview1 modules following WAGI, run on a small pool of
 * executor threads shared by all functions, so a runaway function is stopped by terminating its
 * thread, never stalling the gateway. An instance is cheap: its module compiled once, loaded and
 * pre-instantiated in an executor. No filesystem unless `[wasm] dirs` grants one (read-only), and
 * no network at all.
 */
export class WasmDriver implements SandboxDriver {
  readonly name = "wasm";
  readonly capabilities = { snapshot: false, oomDetection: true } as const;
  readonly modules: ModuleCache;
  readonly #executors: ExecutorPool;
  readonly #maxOutputBytes: number;
  readonly #inlineSliceMs: number;
  /** Function revision -> initial linear memory of its module, in MiB (known once compiled). */
  readonly #initialMiB = new Map<string, number>();
  /** Function revision -> its live instances. */
  readonly #instances = new Map<string, number>();
  /** Function revision -> its main-thread runner, for modules that can run there. */
  readonly #inline = new Map<string, InlineRunner>();
  /** Calls run on the main thread and calls that moved from there to executors. */
  readonly fastPath: FastPathCounts = fastPathCounts();

  constructor(opts: WasmDriverOptions = {}) {
    this.modules = new ModuleCache(opts.cacheDir);
    this.#executors = new ExecutorPool({ spares: opts.spareExecutors ?? 2, max: opts.maxExecutors });
    this.#maxOutputBytes = opts.maxOutputBytes ?? 32 * 2 ** 20;
    this.#inlineSliceMs = opts.inlineSliceMs ?? INLINE_SLICE_MS;
  }

  /**
   * What an instance can really use. It runs up to `concurrent-requests` invocations at once, each
   * on its own fresh copy of the module whose linear memory may grow to the cap; and each executor
   * that ran one keeps a pre-instantiated copy waiting (its initial memory) for the next. So:
   * concurrency × (cap + initial memory + overhead). The initial memory is known once the module
   * is compiled; until then the cap stands in for it.
   */
  memoryMiB(config: FunctionConfig): number {
    const wasm = wasmOf(config);
    const initial = this.#initialMiB.get(`${config.key}@${config.revision}`) ?? wasm.memoryMiB;
    return config.concurrentRequests * (wasm.memoryMiB + initial + COPY_OVERHEAD_MIB);
  }

  /**
   * Response bytes held in memory for invocations still running: bounded by one stream buffer
   * and one ring per invocation, however much the modules write and however slow the clients.
   */
  get heldOutputBytes(): number {
    return this.#executors.heldOutputBytes;
  }

  async prepare(config: FunctionConfig): Promise<void> {
    await this.#compiled(config);
  }

  async #compiled(config: FunctionConfig): Promise<CompiledModule & { snapshot: Snapshot | undefined }> {
    const wasm = wasmOf(config);
    const compiled = await this.modules.forRevision(
      wasm.module,
      config.revision,
      wasm.memoryMiB,
      config.file,
    );
    // A module exporting `wizer.initialize` is initialised here, once (snapshot.ts): a failure
    // makes preparing the function fail, and every copy then starts from the snapshot.
    const snapshot =
      wasm.preInitialise === false
        ? undefined
        : await this.modules.snapshot(compiled, config.file, config.timeoutMs);
    const initialBytes = snapshot?.memoryBytes ?? compiled.initialBytes;
    for (const k of this.#initialMiB.keys()) if (k.startsWith(`${config.key}@`)) this.#initialMiB.delete(k);
    this.#initialMiB.set(`${config.key}@${config.revision}`, Math.ceil(initialBytes / 2 ** 20));
    return { ...compiled, snapshot };
  }

  async start(ctx: StartContext): Promise<WasmInstance> {
    const config = ctx.config;
    const wasm = wasmOf(config);
    const compiled = await this.#compiled(config);
    const key = `${config.key}@${config.revision}`;
    const budget = { left: MAX_GRANTED_BYTES };
    const dirs: Record<string, DirTree> = {};
    for (const [guest, host] of Object.entries(wasm.dirs)) dirs[guest] = await readTree(host, budget);
    const load: LoadPayload = {
      module: compiled.module,
      maxMemoryBytes: compiled.maxMemoryBytes,
      dirs,
      // Stdout streams with back-pressure, so the function's own limit may lift the driver's. It
      // counts the body only (the instance cuts a body past it); stdout also carries the head.
      maxOutputBytes:
        config.maxResponseBodyBytes === undefined
          ? this.#maxOutputBytes
          : config.maxResponseBodyBytes + MAX_HEAD,
      snapshot: compiled.snapshot,
      faasm: compiled.faasm,
    };
    const handle = new WasmInstance(
      this.#executors,
      config,
      ctx.instanceId,
      key,
      load,
      this.#inlineRunner(key, compiled, load),
      () => this.#released(key),
    );
    this.#instances.set(key, (this.#instances.get(key) ?? 0) + 1);
    try {
      // The first instance of a revision proves the module instantiates; later ones find it loaded.
      if (!this.#executors.hasLoaded(key)) await handle.load(ctx.signal);
    } catch (err) {
      await handle.destroy();
      throw err;
    }
    return handle;
  }

  /**
   * The revision's main-thread runner, shared by its instances. Not for modules that could not be
   * instrumented, whose reset would copy too much, or that are granted directories (a call could
   * leave files in the shared in-memory tree for the next).
   */
  #inlineRunner(key: string, compiled: CompiledModule, load: LoadPayload): InlineRunner | undefined {
    // A pre-initialised module starts from its snapshot's memory, which the reset copies.
    const startBytes = load.snapshot?.memoryBytes ?? compiled.initialBytes;
    // A Faasm function's host calls have effects: a call moved from there must not run again.
    if (
      compiled.faasm ||
      !compiled.inline ||
      Object.keys(load.dirs).length > 0 ||
      startBytes > INLINE_MAX_MEMORY
    )
      return undefined;
    let runner = this.#inline.get(key);
    if (!runner) {
      runner = new InlineRunner(compiled.inline, load, this.fastPath, this.#inlineSliceMs);
      this.#inline.set(key, runner);
    }
    return runner;
  }

  /** An instance stopped: with the last of its revision, executors drop that module's copies. */
  #released(key: string): void {
    const left = (this.#instances.get(key) ?? 1) - 1;
    if (left > 0) {
      this.#instances.set(key, left);
      return;
    }
    this.#instances.delete(key);
    this.#inline.delete(key);
    this.#executors.forget(key);
  }

  async close(): Promise<void> {
    await Promise.all([this.#executors.close(), this.modules.close()]);
  }
}

/** One wasm instance: a function revision's module, run on whichever executor is free. */
export class WasmInstance implements SandboxHandle {
  readonly #executors: ExecutorPool;
  readonly #config: FunctionConfig;
  readonly #instanceId: string;
  readonly #key: string;
  readonly #load: LoadPayload;
  readonly #inline: InlineRunner | undefined;
  readonly #onGone: () => void;
  #gone: Error | undefined;

  constructor(
    executors: ExecutorPool,
    config: FunctionConfig,
    instanceId: string,
    key: string,
    load: LoadPayload,
    inline: InlineRunner | undefined,
    onGone: () => void,
  ) {
    this.#executors = executors;
    this.#config = config;
    this.#instanceId = instanceId;
    this.#key = key;
    this.#load = load;
    this.#inline = inline;
    this.#onGone = onGone;
  }

  /** Proves the module instantiates (and leaves a copy loaded in an executor). */
  async load(signal: AbortSignal): Promise<void> {
    const { output, done } = this.#run("load", [], new Uint8Array(0), signal);
    try {
      this.#check("load", await this.#settled(done));
    } finally {
      output.destroy(); // a load writes nothing
    }
  }

  #run(kind: Job["kind"], env: string[], stdin: Job["stdin"], signal: AbortSignal, call?: CallHost) {
    if (this.#gone) throw this.#gone;
    return this.#executors.run(
      { kind, fn: this.#config.key, key: this.#key, load: this.#load, env, stdin, call },
      signal,
    );
  }

  /** The job's end; a dead executor thread becomes the function's error. */
  async #settled(done: Promise<DoneMessage>): Promise<DoneMessage> {
    try {
      return await done;
    } catch (err) {
      if (err instanceof FennecError) throw err;
      const oom = (err as NodeJS.ErrnoException).code === "ERR_WORKER_OUT_OF_MEMORY";
      throw new FennecError(
        oom ? "FN_OOM" : "FN_CRASHED",
        `${this.#config.key}: sandbox died: ${(err as Error).message}`,
      );
    }
  }

  /** Publishes what the call wrote to stderr as its log: each run has its own stderr, so its call is known. */
  #logOf(request: WasmRequest, result: RunResult): void {
    if (result.stderrLog)
      publishCallOutput(
        this.#config.key,
        this.#instanceId,
        request.call?.callId,
        "stderr",
        result.stderrLog,
        result.stderrLogTruncated,
      );
  }

  /** Throws the function's error for a job that did not end well. */
  #check(kind: Job["kind"], result: RunResult): void {
    if (result.outcome === "ok") return;
    const code =
      result.outcome === "host-error" && result.errorCode
        ? (result.errorCode as ErrorCode)
        : OUTCOME_CODES[result.outcome];
    const detail =
      result.outcome === "exit"
        ? `exited with code ${result.exitCode}`
        : result.outcome === "output-too-large"
          ? `wrote a response larger than its limit of ${this.#load.maxOutputBytes} bytes`
          : kind === "load"
            ? `cannot instantiate the module: ${result.message}`
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

  /**
   * Runs the module on the request. Resolves as soon as the module has written its CGI header
   * block (or shown it has none), with the rest of its stdout streaming as the body. An error
   * before that rejects; after it, the body fails with it. The function's timeout is the
   * lifecycle's (instance.ts): it covers the body too, cutting it and cancelling the job through
   * `signal`, whether the module is still writing or blocked on a slow reader.
   */
  async invokeStreaming(request: WasmRequest, signal: AbortSignal): Promise<StreamingResponse> {
    return this.#invoke(request, () => signal);
  }

  /** `signalOf` gives the call's signal; a call answered on the main thread never needs it. */
  async #invoke(request: WasmRequest, signalOf: () => AbortSignal): Promise<StreamingResponse> {
    if (this.#load.faasm) return this.#invokeFaasm(request, signalOf());
    // Bytes at hand (a small request the gateway read whole) go to the module as they are.
    const body =
      request.body instanceof Uint8Array ? request.body : (takeWhole(request.body) ?? request.body);
    const declared = Number.parseInt(request.headers["content-length"] ?? "", 10);
    const length =
      body instanceof Uint8Array ? body.byteLength : Number.isSafeInteger(declared) ? declared : undefined;
    const env = this.#environment(request, length);
    // A small body of known length is read whole first (bounded by that length): the module then
    // reads it as a file, without waking the main thread for each chunk; others stream.
    const stdin =
      body instanceof Uint8Array || length === undefined || length > WHOLE_BODY_BYTES
        ? body
        : await readBody(
            body,
            length,
            () => new FennecError("BAD_REQUEST", "the request body is longer than its content-length"),
          );
    // A short call runs right here unless its function's calls have been running long.
    if (stdin instanceof Uint8Array && this.#inline?.available()) {
      const answer = this.#runInline(request, env, stdin);
      if (answer) return answer;
      // Moved: its function's time away from the main thread counts from when it ends there.
      const inline = this.#inline;
      return this.#onExecutor(request, env, stdin, signalOf, () => inline.movedCallEnded());
    }
    return this.#onExecutor(request, env, stdin, signalOf);
  }

  #environment(request: WasmRequest, length: number | undefined): string[] {
    return wagiEnvironment(request, length, `/invoke/${this.#config.id.name}`, wasmOf(this.#config).env);
  }

  /**
   * Runs the call on the main thread (inline-runner.ts): its answer, or undefined when it moved
   * (having had no effect) and must run on an executor. Throws the function's error.
   */
  #runInline(request: WasmRequest, env: string[], stdin: Uint8Array): StreamingResponse | undefined {
    if (this.#gone) throw this.#gone;
    const ran = this.#inline!.run(env, stdin, this.#config.timeoutMs);
    if (ran.moved) return undefined;
    this.#logOf(request, ran.result);
    this.#check("invoke", ran.result);
    const end = wagiHeadEnd(ran.stdout, true)!;
    const { status, headers } = parseWagiHead(ran.stdout.subarray(0, end));
    return { status, headers, body: new WholeBody(ran.stdout.subarray(end)) };
  }

  /** Runs the call on an executor: resolves at its CGI head, its body streaming (see invokeStreaming). */
  async #onExecutor(
    request: WasmRequest,
    env: string[],
    stdin: Job["stdin"],
    signalOf: () => AbortSignal,
    onEnded?: () => void,
  ): Promise<StreamingResponse> {
    const { output, done } = this.#run("invoke", env, stdin, signalOf());
    // Errors reach the caller through the rejected call or its reading of the body; a body the
    // caller never reads must not take the process down when it fails.
    output.on("error", () => {});
    let jobEnded = false;
    const end = (err?: Error) => {
      jobEnded = true;
      onEnded?.();
      output.finish(err);
    };
    this.#settled(done)
      .then((result) => {
        this.#logOf(request, result);
        this.#check("invoke", result);
      })
      .then(() => end(), end);
    const head = await output.readHead(wagiHeadEnd);
    let response: Pick<InvokeResponse, "status" | "headers">;
    try {
      response = parseWagiHead(head);
    } catch (err) {
      output.destroy(err as Error);
      throw err;
    }
    // A module that has already ended hands its small answer on whole (no stream to track).
    const whole = jobEnded ? output.takeAll() : undefined;
    if (whole) return { ...response, body: new WholeBody(whole) };
    return { ...response, body: output };
  }

  /**
   * A Faasm function (faasm-imports.ts): its input is the whole request body, its output the
   * response body with status 200, on an executor always. It ends before its output is handed on
   * (the output is what it wrote last), so a failure is the call's error, never a cut body.
   */
  async #invokeFaasm(request: WasmRequest, signal: AbortSignal): Promise<StreamingResponse> {
    const limit = this.#config.maxRequestBodyBytes ?? WHOLE_FAASM_INPUT_BYTES;
    const input =
      request.body instanceof Uint8Array
        ? request.body
        : await readBody(
            request.body,
            limit,
            () => new FennecError("BODY_TOO_LARGE", `the input is larger than ${limit} bytes`),
          );
    const { output, done } = this.#run("invoke", [], input, signal, request.call);
    output.on("error", () => {});
    let jobEnded = false;
    this.#settled(done)
      .then((result) => this.#check("invoke", result))
      .then(
        () => {
          jobEnded = true;
          output.finish();
        },
        (err: Error) => {
          jobEnded = true;
          output.finish(err);
        },
      );
    // Its first byte comes only once it ended well; an empty output ends with no byte at all.
    await output.readHead((bytes, ended) => (bytes.byteLength > 0 || ended ? 0 : undefined));
    const headers: Array<[string, string]> = [["content-type", "application/octet-stream"]];
    const whole = jobEnded ? output.takeAll() : undefined;
    return { status: 200, headers, body: whole ? new WholeBody(whole) : output };
  }

  async invoke(request: InvokeRequest, ctx: InvokeContext): Promise<InvokeResponse> {
    return this.#invoke(request, () => ctx.signal);
  }

  /**
   * The warm path: a call whose body is at hand runs on this thread and is answered at once;
   * one that moves from there continues on an executor (a promise), as does every other call.
   */
  invokeNow(request: InvokeRequest, ctx: InvokeContext): InvokeResponse | Promise<InvokeResponse> {
    if (this.#load.faasm || !this.#inline?.available()) return this.#invoke(request, () => ctx.signal);
    const stdin = takeWhole(request.body);
    if (!stdin) return this.#invoke(request, () => ctx.signal);
    const env = this.#environment(request, stdin.byteLength);
    return this.#runInline(request, env, stdin) ?? this.#onExecutor(request, env, stdin, () => ctx.signal);
  }

  async close(): Promise<void> {
    this.#end(new FennecError("INSTANCE_GONE", "instance closed"));
  }

  async destroy(): Promise<void> {
    // Nothing of this instance runs once its jobs are cancelled (the lifecycle aborts them first).
    this.#end(new FennecError("INSTANCE_GONE", "instance destroyed"));
  }

  #end(reason: Error): void {
    if (this.#gone) return;
    this.#gone = reason;
    this.#onGone();
  }
}
