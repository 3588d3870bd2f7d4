/** Messages between the wasm driver (main thread) and its executor worker threads. */
import type { MessagePort } from "node:worker_threads";
import type { Snapshot } from "./snapshot.js";

/** A granted directory tree: file name -> bytes, or a sub-directory. */
export interface DirTree {
  [name: string]: Uint8Array | DirTree;
}

/** What an executor needs to run a function's module; sent once per executor. */
export interface LoadPayload {
  readonly module: WebAssembly.Module;
  readonly maxMemoryBytes: number;
  /** Guest path -> tree, granted read-only. */
  readonly dirs: Readonly<Record<string, DirTree>>;
  readonly maxOutputBytes: number;
  /** The pre-initialised state every copy starts from (snapshot.ts); undefined: the module's own. */
  readonly snapshot?: Snapshot | undefined;
  /**
   * A Faasm function (faasm-imports.ts): `stdin` is its input, its output goes to the stdout ring
   * when it ends well, and what it prints to stdout is log, not response.
   */
  readonly faasm?: boolean;
}

/** One unit of work for an executor: prepare a module (`load`) or run it once (`invoke`). */
export interface JobMessage {
  readonly type: "job";
  readonly id: number;
  readonly kind: "load" | "invoke";
  /** Which function revision's module. */
  readonly key: string;
  /** Present when this executor has not loaded `key` yet. */
  readonly load: LoadPayload | undefined;
  /** Modules this executor should forget (it holds too many). */
  readonly unload: readonly string[];
  readonly env: string[];
  /** The start of stdin (all of it unless `stdinStreams`). */
  readonly stdin: Uint8Array;
  /** The rest of stdin arrives through the executor's stdin ring, until the main thread closes it. */
  readonly stdinStreams: boolean;
}

/** Given to each executor thread at its start: its two rings (see ring.ts) and its host-call channel. */
export interface ExecutorData {
  readonly stdout: SharedArrayBuffer;
  readonly stdin: SharedArrayBuffer;
  /** Host calls of Faasm functions (host-channel.ts): the worker's end of the port, and its wake-up word. */
  readonly hostPort: MessagePort;
  readonly hostSignal: SharedArrayBuffer;
}

/** Forget modules (their function revision has no instance any more). */
export interface UnloadMessage {
  readonly type: "unload";
  readonly keys: readonly string[];
}

export type ToWorker = JobMessage | UnloadMessage;

/** How a job ended, as the worker classifies it; the driver maps it to error codes. */
export type Outcome =
  | "ok"
  | "exit"
  | "trap"
  | "oom"
  | "output-too-large"
  | "instantiate-failed"
  /** A host call failed with a Fennec error (`errorCode`), e.g. CHAIN_TOO_DEEP: the guest was stopped. */
  | "host-error";

export interface DoneMessage {
  readonly type: "done";
  readonly id: number;
  readonly outcome: Outcome;
  readonly exitCode: number;
  /** The last few KiB of stderr, for error messages and logs. */
  readonly stderrTail: string;
  /** An invocation's stderr from its start, bounded: its function log (wasi-run.ts). */
  readonly stderrLog?: string;
  readonly stderrLogTruncated?: boolean;
  readonly message: string;
  /** With `host-error`: the Fennec error code the host call failed with. */
  readonly errorCode?: string | undefined;
}

/** Sent once when the worker has booted (and warmed up) and can take jobs. */
export interface BootedMessage {
  readonly type: "booted";
}

/**
 * Sent when the copy the worker instantiates after an invocation is ready: until then the
 * executor is busy for large modules (instantiating copies their data into a fresh memory).
 */
export interface PreparedMessage {
  readonly type: "prepared";
}

/** A ring changed while the main thread waited on it (ring.ts): it looks again. */
export interface RingMessage {
  readonly type: "ring";
}

export type FromWorker = DoneMessage | BootedMessage | PreparedMessage | RingMessage;
