/**
 * Executor side of the wasm sandbox. An executor thread runs jobs for any number of functions, one
 * at a time: it keeps each function's compiled module and a pre-instantiated copy, so an
 * invocation only runs `_start`. WAGI programs are commands (run once, then exit), so every
 * invocation gets a fresh instance; the next one is instantiated right after the response is
 * posted, off the request's critical path. A runaway job is stopped by terminating the thread.
 */
import { parentPort, workerData } from "node:worker_threads";
import {
  ConsoleStdout,
  Directory,
  File,
  OpenFile,
  PreopenDirectory,
  WASI,
  WASIProcExit,
} from "@bjorn3/browser_wasi_shim";
import type { Fd, Inode } from "@bjorn3/browser_wasi_shim";
import type {
  DirTree,
  DoneMessage,
  ExecutorData,
  FromWorker,
  JobMessage,
  LoadPayload,
  Outcome,
  ToWorker,
} from "./protocol.js";
import { Ring } from "./ring.js";
import { restore } from "./snapshot.js";
import { StreamingStdin } from "./streaming-stdin.js";
import { WARMUP_WASM_BASE64 } from "./warmup-module.js";

const port = parentPort!;
const STDERR_TAIL = 4096;
const rings = workerData as ExecutorData;
// The main thread waits on the rings by messages (see ring.ts); one kind serves both rings.
const tellHost = () => post({ type: "ring" });
const stdoutRing = new Ring(rings.stdout, tellHost);
const stdinRing = new Ring(rings.stdin, tellHost);

/** Thrown out of fd_write to stop a module whose output passed the limit. */
class OutputTooLarge extends Error {}

interface Prepared {
  readonly wasi: WASI;
  readonly instance: WebAssembly.Instance;
  readonly memory: WebAssembly.Memory;
}

interface Loaded {
  readonly load: LoadPayload;
  next: Prepared | undefined;
}

/** Function revision -> its module and the next pre-instantiated copy. */
const modules = new Map<string, Loaded>();

function toInodes(tree: DirTree): Map<string, Inode> {
  const map = new Map<string, Inode>();
  for (const [name, value] of Object.entries(tree)) {
    map.set(
      name,
      value instanceof Uint8Array ? new File(value, { readonly: true }) : new Directory(toInodes(value)),
    );
  }
  return map;
}

function prepare(load: LoadPayload): Prepared {
  // fds 0-2 are replaced per invocation; preopens follow at 3, the WASI convention.
  const fds: Fd[] = [
    new OpenFile(new File(new Uint8Array(0))),
    new ConsoleStdout(() => {}),
    new ConsoleStdout(() => {}),
  ];
  for (const [guest, tree] of Object.entries(load.dirs))
    fds.push(new PreopenDirectory(guest, toInodes(tree)));
  // debug must be off explicitly: the shim logs every call to the console when it is left undefined.
  const wasi = new WASI([], [], fds, { debug: false });
  const instance = new WebAssembly.Instance(load.module, { wasi_snapshot_preview1: wasi.wasiImport });
  const memory = instance.exports["memory"];
  if (!(memory instanceof WebAssembly.Memory)) throw new Error("the module exports no memory");
  if (typeof instance.exports["_start"] !== "function")
    throw new Error("the module exports no _start (is it a WASI command?)");
  // The shim reads memory through `inst`, which it normally sets in start(); we call _start ourselves.
  wasi.inst = instance as unknown as WASI["inst"];
  // Here, not per invocation: prepare runs off the request's critical path (see job()).
  if (load.snapshot) restore(instance, load.snapshot);
  return { wasi, instance, memory };
}

function post(msg: FromWorker, transfer: ArrayBuffer[] = []): void {
  port.postMessage(msg, transfer);
}

function classify(
  err: unknown,
  memory: WebAssembly.Memory,
  maxBytes: number,
): { outcome: Outcome; message: string } {
  const message = err instanceof Error ? err.message : String(err);
  // A module that hits its memory cap usually sees malloc fail and aborts with a trap, so a trap
  // with memory at (or within one growth step of) the cap is reported as out-of-memory.
  const nearCap = memory.buffer.byteLength + 2 * 2 ** 20 > maxBytes;
  if (err instanceof RangeError && /memory/i.test(message)) return { outcome: "oom", message };
  if (err instanceof WebAssembly.RuntimeError || err instanceof RangeError) {
    return nearCap
      ? { outcome: "oom", message: `${message} (linear memory at its limit)` }
      : { outcome: "trap", message };
  }
  return { outcome: "trap", message };
}

interface RunResult {
  outcome: Outcome;
  exitCode: number;
  stderrTail: string;
  message: string;
}

/**
 * Runs one invocation's `_start` on a prepared instance. Stdout goes to `write` as the module
 * writes it (which blocks while the main thread's reader is behind); a module that writes more
 * than `maxOutputBytes` is stopped there.
 */
function run(
  prepared: Prepared,
  env: string[],
  stdin: Fd,
  write: (chunk: Uint8Array) => void,
  maxOutputBytes: number,
  maxMemoryBytes: number,
): RunResult {
  let size = 0;
  let stderr = "";
  const { wasi, instance, memory } = prepared;
  wasi.env = env;
  wasi.fds[0] = stdin;
  wasi.fds[1] = new ConsoleStdout((chunk) => {
    size += chunk.byteLength;
    if (size > maxOutputBytes) throw new OutputTooLarge();
    write(chunk);
  });
  wasi.fds[2] = new ConsoleStdout((chunk) => {
    stderr = (stderr + Buffer.from(chunk).toString("utf8")).slice(-STDERR_TAIL);
  });
  let outcome: Outcome = "ok";
  let exitCode = 0;
  let message = "";
  try {
    (instance.exports["_start"] as () => void)();
  } catch (err) {
    if (err instanceof WASIProcExit) {
      exitCode = err.code;
      if (exitCode !== 0) outcome = "exit";
    } else if (err instanceof OutputTooLarge) {
      outcome = "output-too-large";
      exitCode = -1;
    } else {
      ({ outcome, message } = classify(err, memory, maxMemoryBytes));
      exitCode = -1;
    }
  }
  return { outcome, exitCode, stderrTail: stderr, message };
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
  const stdin = msg.stdinStreams
    ? new StreamingStdin(msg.stdin, stdinRing)
    : new OpenFile(new File(msg.stdin, { readonly: true }));
  const r = run(
    prepared,
    msg.env,
    stdin,
    (chunk) => stdoutRing.writeAll(chunk),
    entry.load.maxOutputBytes,
    entry.load.maxMemoryBytes,
  );
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
    const stdin = new OpenFile(new File(Buffer.from("warm up"), { readonly: true }));
    run(prepare(warmup), ["REQUEST_METHOD=GET", "PATH_INFO=/"], stdin, () => {}, 1024, 2 ** 24);
  }
} catch {
  // A failed warm-up costs only speed.
}
post({ type: "booted" });
