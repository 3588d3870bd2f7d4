/** Messages between the wasm driver (main thread) and its worker threads. */

/** A granted directory tree: file name -> bytes, or a sub-directory. */
export interface DirTree {
  [name: string]: Uint8Array | DirTree;
}

export interface LoadMessage {
  readonly type: "load";
  readonly module: WebAssembly.Module;
  readonly maxMemoryBytes: number;
  /** Guest path -> tree, granted read-only. */
  readonly dirs: Readonly<Record<string, DirTree>>;
  readonly maxOutputBytes: number;
}

export interface InvokeMessage {
  readonly type: "invoke";
  readonly id: number;
  readonly env: string[];
  readonly body: Uint8Array;
}

export interface ResetMessage {
  readonly type: "reset";
}

export type ToWorker = LoadMessage | InvokeMessage | ResetMessage;

/** How a run ended, as the worker classifies it; the driver maps it to error codes. */
export type Outcome = "ok" | "exit" | "trap" | "oom" | "output-too-large" | "instantiate-failed";

export interface ResultMessage {
  readonly type: "result";
  readonly id: number;
  readonly outcome: Outcome;
  readonly exitCode: number;
  readonly stdout: Uint8Array;
  /** The last few KiB of stderr, for error messages and logs. */
  readonly stderrTail: string;
  readonly message: string;
}

export interface ReadyMessage {
  readonly type: "ready";
}

export interface LoadFailedMessage {
  readonly type: "load-failed";
  readonly outcome: Outcome;
  readonly message: string;
}

/** Sent once when the worker has booted and can take a module. */
export interface BootedMessage {
  readonly type: "booted";
}

export type FromWorker = ResultMessage | ReadyMessage | LoadFailedMessage | BootedMessage;
