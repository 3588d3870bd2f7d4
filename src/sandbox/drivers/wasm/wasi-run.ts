/**
 * Running a WAGI command once with the WASI shim: making a WASI-ready instance of a module and
 * running its `_start` on a request, classifying how it ended. Shared by the executor threads
 * (worker.ts) and the main thread's fast path (inline-runner.ts), so a call ends the same way
 * wherever it ran.
 */
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
import { CALL_LOG_BYTES } from "../../call-log.js";
import { HostCallFailure } from "./host-channel.js";
import type { DirTree, Outcome } from "./protocol.js";

const STDERR_TAIL = 4096;

/** Thrown out of fd_write to stop a module whose output passed the limit. */
class OutputTooLarge extends Error {}

/** A module's instance with its own WASI state. */
export interface Prepared {
  readonly wasi: WASI;
  /** The environment of the run under way, encoded once (see `environImports`). */
  readonly environ: { block: Buffer; count: number };
  readonly instance: WebAssembly.Instance;
  readonly memory: WebAssembly.Memory;
  /** The preopened directories, fds 3 and up (the WASI convention), for resetting `wasi.fds`. */
  readonly preopens: readonly Fd[];
}

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

/**
 * Instantiates `module` with the WASI shim (and `extra` imports beside it). `overrides` replaces
 * some of the shim's own WASI functions for this instance.
 */
export function prepareInstance(
  module: WebAssembly.Module,
  dirs: Readonly<Record<string, DirTree>>,
  extra: WebAssembly.Imports = {},
  overrides: Record<string, (...args: never[]) => unknown> = {},
): Prepared {
  const preopens: Fd[] = Object.entries(dirs).map(
    ([guest, tree]) => new PreopenDirectory(guest, toInodes(tree)),
  );
  // fds 0-2 are replaced per invocation; preopens follow at 3.
  const fds: Fd[] = [
    new OpenFile(new File(new Uint8Array(0))),
    new ConsoleStdout(() => {}),
    new ConsoleStdout(() => {}),
    ...preopens,
  ];
  // debug must be off explicitly: the shim logs every call to the console when it is left undefined.
  const wasi = new WASI([], [], fds, { debug: false });
  const environ = { block: Buffer.alloc(0), count: 0 };
  // The instance, and so its memory, exists only once the imports are made.
  const made: { memory?: WebAssembly.Memory } = {};
  const imports = {
    ...extra,
    wasi_snapshot_preview1: {
      ...wasi.wasiImport,
      ...environImports(environ, () => made.memory!),
      ...overrides,
    },
  };
  const instance = new WebAssembly.Instance(module, imports);
  const memory = instance.exports["memory"];
  if (!(memory instanceof WebAssembly.Memory)) throw new Error("the module exports no memory");
  made.memory = memory;
  if (typeof instance.exports["_start"] !== "function")
    throw new Error("the module exports no _start (is it a WASI command?)");
  // The shim reads memory through `inst`, which it normally sets in start(); we call _start ourselves.
  wasi.inst = instance as unknown as WASI["inst"];
  return { wasi, environ, instance, memory, preopens };
}

/**
 * `environ_sizes_get` and `environ_get` over an environment encoded once per run. The shim's own
 * encode every variable twice with a new TextEncoder each, which was the largest cost of a short
 * call (a WAGI request carries a dozen variables or more).
 */
function environImports(environ: { block: Buffer; count: number }, memoryOf: () => WebAssembly.Memory) {
  return {
    environ_sizes_get(countPtr: number, sizePtr: number): number {
      const view = new DataView(memoryOf().buffer);
      view.setUint32(countPtr, environ.count, true);
      view.setUint32(sizePtr, environ.block.byteLength, true);
      return 0;
    },
    environ_get(pointersPtr: number, bufPtr: number): number {
      const buffer = memoryOf().buffer;
      new Uint8Array(buffer).set(environ.block, bufPtr);
      const view = new DataView(buffer);
      // Each variable starts after the NUL that ends the one before.
      for (let i = 0, at = 0; i < environ.count; i++) {
        view.setUint32(pointersPtr + 4 * i, bufPtr + at, true);
        at = environ.block.indexOf(0, at) + 1;
      }
      return 0;
    },
  };
}

/** Encodes an environment as `environ_get` hands it over: NUL-terminated strings end to end. */
function encodeEnviron(env: readonly string[]): { block: Buffer; count: number } {
  // A variable holding a NUL would split in two; HTTP forbids NUL in headers, and none is made here.
  const clean = env.filter((v) => !v.includes("\0"));
  return { block: Buffer.from(clean.length > 0 ? clean.join("\0") + "\0" : "", "utf8"), count: clean.length };
}

/** How a run ended. */
export interface RunResult {
  outcome: Outcome;
  exitCode: number;
  stderrTail: string;
  /** The call's stderr from its start, up to CALL_LOG_BYTES: its function log. */
  stderrLog?: string;
  /** It wrote more stderr than `stderrLog` holds. */
  stderrLogTruncated?: boolean;
  message: string;
  /** With `host-error`: the Fennec code a host call failed with. */
  errorCode?: string | undefined;
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

export interface RunOptions {
  readonly env: string[];
  readonly stdin: Fd;
  /** Receives stdout as the module writes it; it may throw to stop the module (see `escapes`). */
  readonly write: (chunk: Uint8Array) => void;
  readonly maxOutputBytes: number;
  readonly maxMemoryBytes: number;
  /** Errors that are not the module's outcome but the caller's own: rethrown as they are. */
  readonly escapes?: (err: unknown) => boolean;
  /**
   * Stdout is log, not response (a Faasm function answers with its output): it goes to the stderr
   * tail with stderr, and `write` is not called.
   */
  readonly stdoutIsLog?: boolean;
}

/**
 * Runs one invocation's `_start` on a prepared instance, which is spent afterwards (a command
 * runs once). A module that writes more than `maxOutputBytes` is stopped there.
 */
export function runStart(prepared: Prepared, opts: RunOptions): RunResult {
  let size = 0;
  let stderr = "";
  let log = "";
  let logBytes = 0;
  let logTruncated = false;
  const { wasi, instance, memory } = prepared;
  Object.assign(prepared.environ, encodeEnviron(opts.env));
  const stderrFd = new ConsoleStdout((chunk) => {
    const text = Buffer.from(chunk).toString("utf8");
    stderr = (stderr + text).slice(-STDERR_TAIL);
    // The log keeps the start, the error message the end: a failure's reason is usually last.
    if (logBytes + chunk.byteLength <= CALL_LOG_BYTES) {
      log += text;
      logBytes += chunk.byteLength;
    } else logTruncated = true;
  });
  const fds: Fd[] = [
    opts.stdin,
    // A Faasm function's stdout is log, like its stderr (its response is its output).
    opts.stdoutIsLog
      ? stderrFd
      : new ConsoleStdout((chunk) => {
          size += chunk.byteLength;
          if (size > opts.maxOutputBytes) throw new OutputTooLarge();
          opts.write(chunk);
        }),
    stderrFd,
    ...prepared.preopens,
  ];
  wasi.fds = fds;
  let outcome: Outcome = "ok";
  let exitCode = 0;
  let message = "";
  let errorCode: string | undefined;
  try {
    (instance.exports["_start"] as () => void)();
  } catch (err) {
    if (opts.escapes?.(err)) throw err;
    if (err instanceof HostCallFailure) {
      outcome = "host-error";
      exitCode = -1;
      ({ message, code: errorCode } = err);
    } else if (err instanceof WASIProcExit) {
      exitCode = err.code;
      if (exitCode !== 0) outcome = "exit";
    } else if (err instanceof OutputTooLarge) {
      outcome = "output-too-large";
      exitCode = -1;
    } else {
      ({ outcome, message } = classify(err, memory, opts.maxMemoryBytes));
      exitCode = -1;
    }
  }
  return {
    outcome,
    exitCode,
    stderrTail: stderr,
    stderrLog: log,
    stderrLogTruncated: logTruncated,
    message,
    errorCode,
  };
}

/** Stdin of bytes at hand, read as a file. */
export function bytesStdin(bytes: Uint8Array): Fd {
  return new OpenFile(new File(bytes, { readonly: true }));
}

const ERRNO_SUCCESS = 0;
const ERRNO_INVAL = 28;
const ERRNO_NOTSUP = 58;
const EVENTTYPE_CLOCK = 0;
const CLOCKID_REALTIME = 0;
const SUBSCRIPTION_BYTES = 48;
const EVENT_BYTES = 32;
const ABSTIME = 1;
/** The thread blocks on this word, which nobody ever changes: a sleep that uses no CPU. */
const sleeper = new Int32Array(new SharedArrayBuffer(4));

/**
 * WASI's `poll_oneoff` for clock subscriptions that blocks the thread (`Atomics.wait`) instead of
 * spinning as the shim's does: on an executor a sleeping call then takes no CPU from the calls
 * of other functions. Like the shim, it waits only on clocks (a WAGI module has no descriptor
 * worth polling: stdin is a file and stdout never refuses a write for long).
 */
export function blockingPollOneoff(memoryOf: () => WebAssembly.Memory) {
  return (inPtr: number, outPtr: number, count: number, neventsPtr: number): number => {
    if (count === 0) return ERRNO_INVAL;
    const view = new DataView(memoryOf().buffer);
    const nowNs = (clock: number) =>
      clock === CLOCKID_REALTIME
        ? BigInt(Date.now()) * 1_000_000n
        : BigInt(Math.round(performance.now() * 1e6));
    let wakeNs: bigint | undefined;
    const deadlines: bigint[] = [];
    for (let i = 0; i < count; i++) {
      const at = inPtr + i * SUBSCRIPTION_BYTES;
      if (view.getUint8(at + 8) !== EVENTTYPE_CLOCK) return ERRNO_NOTSUP;
      const clock = view.getUint32(at + 16, true);
      const timeout = view.getBigUint64(at + 24, true);
      const absolute = (view.getUint16(at + 40, true) & ABSTIME) !== 0;
      // Kept as time left from now, whatever the clock, so the earliest is simply the smallest.
      const left = absolute ? timeout - nowNs(clock) : timeout;
      deadlines.push(left);
      if (wakeNs === undefined || left < wakeNs) wakeNs = left;
    }
    const due = wakeNs! > 0n ? wakeNs! : 0n;
    if (due > 0n) Atomics.wait(sleeper, 0, 0, Number(due) / 1e6);
    // Every clock due by now fires; the earliest always is.
    let events = 0;
    const out = new DataView(memoryOf().buffer);
    for (let i = 0; i < count; i++) {
      if (deadlines[i]! > due) continue;
      const at = outPtr + events * EVENT_BYTES;
      out.setBigUint64(at, view.getBigUint64(inPtr + i * SUBSCRIPTION_BYTES, true), true);
      out.setUint16(at + 8, ERRNO_SUCCESS, true);
      out.setUint8(at + 10, EVENTTYPE_CLOCK);
      events++;
    }
    out.setUint32(neventsPtr, events, true);
    return ERRNO_SUCCESS;
  };
}
