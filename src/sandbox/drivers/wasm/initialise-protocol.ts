/** Messages between `initialise.ts` (main thread) and its one-shot initialiser thread. */
import type { Snapshot } from "./snapshot.js";

export interface InitialiseJob {
  readonly module: WebAssembly.Module;
  /** The module's memory cap: a snapshot above it is refused. */
  readonly maxMemoryBytes: number;
}

export type InitialiseDone =
  { readonly ok: true; readonly snapshot: Snapshot } | { readonly ok: false; readonly message: string };
