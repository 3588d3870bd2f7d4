/**
 * Executor side of the wasm sandbox. An executor thread runs jobs for any number of functions, one
 * at a time: it keeps each function's compiled module and a pre-instantiated copy, so an
 * invocation only runs `_start`. WAGI programs are commands (run once, then exit), so every
 * invocation gets a fresh instance; the next one is instantiated right after the response is
 * posted, off the request's critical path. A runaway job is stopped by terminating the thread.
 */
import { parentPort, workerData } from "node:worker_threads";
import { faasmImports, faasmRun, type FaasmRun } from "./faasm-imports.js";
import { HostChannelClient } from "./host-channel.js";
import type { DoneMessage, ExecutorData, FromWorker, JobMessage, LoadPayload, ToWorker } from "./protocol.js";
import { Ring } from "./ring.js";
import { restore } from "./snapshot.js";
import { StreamingStdin } from "./streaming-stdin.js";
import { EXECUTOR_NICE, lowerThisThread } from "./thread-priority.js";
import { blockingPollOneoff, bytesStdin, prepareInstance, runStart, type Prepared } from "./wasi-run.js";
import { WARMUP_WASM_BASE64 } from "./warmup-module.js";

const port = parentPort!;
// Guest code spinning here must not take CPU from the gateway's thread (thread-priority.ts).
lowerThisThread(EXECUTOR_NICE);
const rings = workerData as ExecutorData;
// The main thread waits on the rings by messages (see ring.ts); one kind serves both rings.
const tellHost = () => post({ type: "ring" });
const stdoutRing = new Ring(rings.stdout, tellHost);
const stdinRing = new Ring(rings.stdin, tellHost);
/** Faasm functions' host calls (chain, await, state) go to the main thread over this. */
const host = new HostChannelClient(rings.hostPort, rings.hostSignal);
/** A Faasm function's copy -> the run its imports read and fill in. */
const faasmRuns = new WeakMap<Prepared, FaasmRun>();

interface Loaded {
  readonly load: LoadPayload;
  next: Prepared | undefined;
}

/** Function revision -> its module and the next pre-instantiated copy. */
const modules = new Map<string, Loaded>();

function prepare(load: LoadPayload): Prepared {
  // The instance, and so its memory, exists only once the imports are made.
  const made: { prepared?: Prepared } = {};
  const run = load.faasm ? faasmRun() : undefined;
  made.prepared = prepareInstance(
    load.module,
    load.dirs,
    run
      ? faasmImports(
          run,
          host,
          () => made.prepared!.memory,
          () => made.prepared!.instance.exports,
        )
      : {},
    { poll_oneoff: blockingPollOneoff(() => made.prepared!.memory) },
  );
  if (run) faasmRuns.set(made.prepared, run);
  // Here, not per invocation: prepare runs off the request's critical path (see job()).
  if (load.snapshot) restore(made.prepared.instance, load.snapshot);
  return made.prepared;
}

function post(msg: FromWorker, transfer: ArrayBuffer[] = []): void {
  port.postMessage(msg, transfer);
}

function done(id: number, r: Omit<DoneMessage, "type" | "id">): void {
  post({ type: "done", id, ...r });
}

function failure(id: number, err: unknown): void {
  const message = err instanceof Error ? err.message : String(err);
  const oom = err instanceof RangeError && /memory/i.test(message);
  done(id, {
    outcome: oom ? "oom" : "instantiate-failed",
    exitCode: -1,
    stderrTail: "",
    message,
  });
}

function job(msg: JobMessage): void {
  for (const key of msg.unload) modules.delete(key);
  if (msg.load) modules.set(msg.key, { load: msg.load, next: undefined });
  const entry = modules.get(msg.key);
  if (!entry) {
    failure(msg.id, new Error(`module ${msg.key} is not loaded in this executor`));
    return;
  }
  let prepared: Prepared;
  try {
    prepared = entry.next ?? prepare(entry.load);
  } catch (err) {
    modules.delete(msg.key);
    failure(msg.id, err);
    return;
  }
  if (msg.kind === "load") {
    entry.next = prepared;
    done(msg.id, { outcome: "ok", exitCode: 0, stderrTail: "", message: "" });
    return;
  }
  entry.next = undefined;
  const faasm = faasmRuns.get(prepared);
  let r;
  if (faasm) {
    // A Faasm function reads its input through __faasm_read_input; its stdin is empty.
    Object.assign(faasm, { input: msg.stdin, output: undefined, maxOutputBytes: entry.load.maxOutputBytes });
    faasm.mapped.clear();
    r = runStart(prepared, {
      env: msg.env,
      stdin: bytesStdin(new Uint8Array(0)),
      write: () => {},
      stdoutIsLog: true,
      maxOutputBytes: entry.load.maxOutputBytes,
      maxMemoryBytes: entry.load.maxMemoryBytes,
    });
    // Its output is the response only when it ended well; the ring carries it in pieces.
    if (r.outcome === "ok" && faasm.output) stdoutRing.writeAll(faasm.output);
    faasm.output = undefined;
  } else {
    const stdin = msg.stdinStreams ? new StreamingStdin(msg.stdin, stdinRing) : bytesStdin(msg.stdin);
    r = runStart(prepared, {
      env: msg.env,
      stdin,
      write: (chunk) => stdoutRing.writeAll(chunk),
      maxOutputBytes: entry.load.maxOutputBytes,
      maxMemoryBytes: entry.load.maxMemoryBytes,
    });
  }
  done(msg.id, r);
  setImmediate(() => {
    if (modules.get(msg.key) === entry && !entry.next) {
      try {
        entry.next = prepare(entry.load);
      } catch {
        entry.next = undefined; // reported by the next invocation, which retries and fails visibly
      }
    }
    post({ type: "prepared" });
  });
}

port.on("message", (msg: ToWorker) => {
  if (msg.type === "unload") for (const key of msg.keys) modules.delete(key);
  else job(msg);
});

// Warm up before announcing: the first invocation in a fresh thread would otherwise pay for
// compiling the WASI shim's JavaScript and V8's wrappers for the WASI import signatures.
try {
  const warmup: LoadPayload = {
    module: new WebAssembly.Module(Buffer.from(WARMUP_WASM_BASE64, "base64")),
    maxMemoryBytes: 2 ** 24,
    dirs: {},
    maxOutputBytes: 1024,
  };
  for (let i = 0; i < 3; i++) {
    runStart(prepare(warmup), {
      env: ["REQUEST_METHOD=GET", "PATH_INFO=/"],
      stdin: bytesStdin(Buffer.from("warm up")),
      write: () => {},
      maxOutputBytes: 1024,
      maxMemoryBytes: 2 ** 24,
    });
  }
} catch {
  // A failed warm-up costs only speed.
}
post({ type: "booted" });
