/** Messages between the module checker (main thread) and its worker thread. */

export interface CheckJob {
  readonly id: number;
  /**
   * `hash` reads and hashes a file; `check` validates, memory-caps and checks the interface of the
   * bytes (given, or read from `path`), and compiles them when `compile` is set.
   */
  readonly kind: "hash" | "check";
  readonly bytes?: Uint8Array | undefined;
  readonly path?: string | undefined;
  readonly maxPages: number;
  readonly what: string;
  readonly compile: boolean;
  /** The disk cache: `<cacheFile>` with `%h` replaced by the hash holds the module already checked and capped. */
  readonly cacheFile?: string | undefined;
}

export interface CheckDone {
  readonly id: number;
  readonly hash: string;
  /** The checked, memory-capped bytes (empty for `hash` jobs). */
  readonly bytes: Uint8Array;
  readonly initialPages: number;
  /** True when the bytes came from the disk cache (already checked in an earlier run). */
  readonly fromCache: boolean;
  readonly module: WebAssembly.Module | undefined;
  readonly error: { readonly code: string; readonly message: string } | undefined;
}
