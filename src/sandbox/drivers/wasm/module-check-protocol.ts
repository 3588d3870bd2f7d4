/** Messages between the module checker (main thread) and its worker thread. */
import type { InlineModule } from "./inline-runner.js";

export interface CheckJob {
  readonly type: "check";
  readonly id: number;
  /**
   * `hash` reads and hashes a file; `check` validates, memory-caps and checks the interface of the
   * bytes (given, or read from `path`), and compiles them when `compile` is set.
   */
  readonly kind: "hash" | "check";
  /** Read the module from this file; without it, the bytes sent by `begin` and `chunk` are checked. */
  readonly path?: string | undefined;
  readonly maxPages: number;
  readonly what: string;
  readonly compile: boolean;
  /**
   * The disk cache: `<cacheFile>` with `%h` replaced by the hash holds the module already checked
   * and capped; a module checked now is written there.
   */
  readonly cacheFile?: string | undefined;
}

/** Announces the bytes of job `id`, sent next in chunks (never one large copy on the main thread). */
export interface BeginBytes {
  readonly type: "begin";
  readonly id: number;
  readonly size: number;
}

export interface BytesChunk {
  readonly type: "chunk";
  readonly id: number;
  readonly at: number;
  readonly piece: Uint8Array;
}

export type ToChecker = CheckJob | BeginBytes | BytesChunk;

export interface CheckDone {
  readonly id: number;
  readonly hash: string;
  readonly initialPages: number;
  readonly module: WebAssembly.Module | undefined;
  /** With `compile`: the module instrumented for the main thread, unless it could not be. */
  readonly inline: InlineModule | undefined;
  /** It imports Faasm's host calls (module-interface.ts `isFaasmModule`): executors only. */
  readonly faasm: boolean;
  /** The module exports `wizer.initialize` (a `check` found it; see snapshot.ts). */
  readonly initializer: boolean;
  /** Why an initialising module cannot be snapshotted (then it is refused unless pre-initialise is off). */
  readonly snapshotRefusal: string | undefined;
  readonly error: { readonly code: string; readonly message: string } | undefined;
}
