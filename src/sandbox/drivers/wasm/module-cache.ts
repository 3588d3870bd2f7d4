import { lstat, mkdir, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { setFlagsFromString } from "node:v8";
import type { InlineModule } from "./inline-runner.js";
import { FennecError } from "../../../core/errors.js";
import { writeFileAtomic } from "../../../registry/atomic-write.js";
import { initialise } from "./initialise.js";
import { PAGE_BYTES } from "./memory-limit.js";
import { ModuleChecker } from "./module-checker.js";
import { decodeSnapshot, encodeSnapshot, type Snapshot } from "./snapshot.js";

// Node 20's V8 compiles wasm functions lazily, at their first call, in whichever thread makes it.
// Compiling eagerly makes compilation happen once, when a module is prepared (in the checker's
// thread); a cold start is then only an instantiation (measured: a first call of echo drops from
// 2.6 ms to 0.6 ms). V8 flags are process-wide, so this also covers the worker threads.
setFlagsFromString("--no-wasm-lazy-compilation");

/**
 * A disk cache entry's name: `<sha-256 of the module>-<memory limit in MiB>.wasm` (the checked,
 * capped module) or `.snapshot` (its pre-initialised state, snapshot.ts).
 */
const CACHE_ENTRY = /^([0-9a-f]{64})-\d+\.(?:wasm|snapshot)$/;

export interface CompiledModule {
  readonly module: WebAssembly.Module;
  readonly hash: string;
  readonly maxMemoryBytes: number;
  /** The linear memory an instance starts with, before it grows. */
  readonly initialBytes: number;
  /** The module instrumented to run on the main thread, unless it could not be (inline-runner.ts). */
  readonly inline: InlineModule | undefined;
  /** It imports Faasm's host calls: a Faasm function, run on executors only (faasm-imports.ts). */
  readonly faasm: boolean;
  /** It exports `wizer.initialize`: `ModuleCache.snapshot` initialises it. */
  readonly initializer: boolean;
  /** Why it cannot be pre-initialised, if it cannot (see module-check-worker.ts). */
  readonly snapshotRefusal: string | undefined;
}

function unsnapshottable(what: string, why: string): FennecError {
  return new FennecError(
    "FN_BAD_MODULE",
    `${what}: exports wizer.initialize but cannot be pre-initialised: ${why} (set [wasm] pre-initialise = false)`,
  );
}

/** Checks upload and deploy bytes on this thread's behalf; ended when idle. */
const uploadChecker = new ModuleChecker();

/**
 * Validates raw bytes as a module the sandbox can run (upload-time check, no caching): valid
 * WebAssembly, cappable to `maxMemoryMiB`, importing only what the sandbox grants; and, given
 * `initialiseWithinMs`, a module exporting `wizer.initialize` must initialise within that. Runs on the
 * checker's thread; this thread only copies the bytes there.
 */
export async function validateModuleBytes(
  bytes: Uint8Array,
  maxMemoryMiB: number,
  what: string,
  initialiseWithinMs?: number,
): Promise<void> {
  const checked = await uploadChecker.run({
    kind: "check",
    bytes,
    maxPages: (maxMemoryMiB * 2 ** 20) / PAGE_BYTES,
    what,
    compile: false,
  });
  if (!checked.initializer || initialiseWithinMs === undefined) return;
  // A module that initialises itself is only valid if its initialisation succeeds: compile it
  // (checked already, so this only compiles) and run that once, as preparing it would.
  const { module, snapshotRefusal } = await uploadChecker.run({
    kind: "check",
    bytes,
    maxPages: (maxMemoryMiB * 2 ** 20) / PAGE_BYTES,
    what,
    compile: true,
  });
  if (snapshotRefusal) throw unsnapshottable(what, snapshotRefusal);
  await initialise({ module: module!, maxMemoryBytes: maxMemoryMiB * 2 ** 20 }, what, initialiseWithinMs);
}

/**
 * Compiled modules, cached in memory by content hash and memory limit, so a cold start is an
 * instantiation, not a compile. The disk cache keeps the checked, memory-capped module bytes
 * keyed the same way, so a restart skips validation and rewriting. (Node exposes no API to
 * persist V8's compiled wasm code, so a restart still compiles each module once, at first use.)
 * Reading, hashing, checking and compiling all happen on the checker's thread.
 */
export class ModuleCache {
  readonly #memory = new Map<string, Promise<CompiledModule>>();
  /** (path, revision, limit) -> module: a cold start of an unchanged function reads no file. */
  readonly #byRevision = new Map<string, Promise<CompiledModule>>();
  /** `<hash>-<limit>` -> the module's pre-initialised state (see `snapshot`). */
  readonly #snapshots = new Map<string, Promise<Snapshot>>();
  readonly #dir: string | undefined;
  readonly #checker = new ModuleChecker();
  /** Ends initialisations still running when the cache closes. */
  readonly #closing = new AbortController();

  constructor(diskDir: string | undefined) {
    this.#dir = diskDir;
  }

  /** The module of a function at a given config revision (which covers the module file's stamp). */
  forRevision(path: string, revision: string, maxMemoryMiB: number, what: string): Promise<CompiledModule> {
    const key = `${path}\0${revision}\0${maxMemoryMiB}`;
    let entry = this.#byRevision.get(key);
    if (!entry) {
      // A new revision replaces the older ones of the same file, so re-uploads do not pile up
      // compiled modules; a module no revision uses any more is dropped too.
      for (const old of [...this.#byRevision.keys()].filter((k) => k.startsWith(`${path}\0`))) {
        this.#byRevision.delete(old);
      }
      entry = this.get(path, maxMemoryMiB, what);
      this.#byRevision.set(key, entry);
      entry.then(
        () => this.#dropUnused(),
        () => this.#byRevision.delete(key),
      );
    }
    return entry;
  }

  async #dropUnused(): Promise<void> {
    const settled = async (p: Promise<CompiledModule>) => p.catch(() => undefined);
    const used = new Set(await Promise.all([...this.#byRevision.values()].map(settled)));
    for (const [key, entry] of this.#memory) {
      if (used.has(await settled(entry))) continue;
      this.#memory.delete(key);
      this.#snapshots.delete(key);
    }
  }

  async get(path: string, maxMemoryMiB: number, what: string): Promise<CompiledModule> {
    const maxPages = (maxMemoryMiB * 2 ** 20) / PAGE_BYTES;
    const { hash } = await this.#checker.run({ kind: "hash", path, maxPages, what, compile: false });
    const key = `${hash}-${maxMemoryMiB}`;
    let entry = this.#memory.get(key);
    if (!entry) {
      entry = this.#compile(path, key, maxMemoryMiB, what);
      this.#memory.set(key, entry);
      entry.catch(() => this.#memory.delete(key));
    }
    return entry;
  }

  async #compile(path: string, key: string, maxMemoryMiB: number, what: string): Promise<CompiledModule> {
    const maxMemoryBytes = maxMemoryMiB * 2 ** 20;
    const cacheFile = this.#dir ? join(this.#dir, `%h-${maxMemoryMiB}.wasm`) : undefined;
    const checked = await this.#checker.run({
      kind: "check",
      path,
      maxPages: maxMemoryBytes / PAGE_BYTES,
      what,
      compile: true,
      cacheFile,
    });
    if (`${checked.hash}-${maxMemoryMiB}` !== key) {
      // The file changed between hashing and checking: key the module by what was checked.
      this.#memory.delete(key);
    }
    return {
      module: checked.module!,
      hash: checked.hash,
      maxMemoryBytes,
      initialBytes: checked.initialPages * PAGE_BYTES,
      inline: checked.inline,
      faasm: checked.faasm,
      initializer: checked.initializer,
      snapshotRefusal: checked.snapshotRefusal,
    };
  }

  /**
   * The pre-initialised state of a module that exports `wizer.initialize` (undefined for one that
   * does not, such as a module Wizer has already initialised): its initialisation is run once per
   * module and memory limit (initialise.ts), bounded by `timeoutMs`, and kept in memory and on disk
   * beside the module, so neither a new instance nor a restart runs it again. A failure is
   * `FN_BAD_MODULE` and is not cached: preparing the function again retries.
   */
  snapshot(compiled: CompiledModule, what: string, timeoutMs: number): Promise<Snapshot | undefined> {
    if (!compiled.initializer) return Promise.resolve(undefined);
    if (compiled.snapshotRefusal) return Promise.reject(unsnapshottable(what, compiled.snapshotRefusal));
    const key = `${compiled.hash}-${compiled.maxMemoryBytes / 2 ** 20}`;
    let entry = this.#snapshots.get(key);
    if (!entry) {
      entry = this.#initialised(compiled, key, what, timeoutMs);
      this.#snapshots.set(key, entry);
      entry.catch(() => this.#snapshots.delete(key));
    }
    return entry;
  }

  async #initialised(
    compiled: CompiledModule,
    key: string,
    what: string,
    timeoutMs: number,
  ): Promise<Snapshot> {
    const file = this.#dir ? join(this.#dir, `${key}.snapshot`) : undefined;
    const stored = file ? await readFile(file).catch(() => undefined) : undefined;
    const cached = stored && decodeSnapshot(stored);
    if (cached && cached.memoryBytes <= compiled.maxMemoryBytes) return cached;
    const snapshot = await initialise(
      { module: compiled.module, maxMemoryBytes: compiled.maxMemoryBytes },
      what,
      timeoutMs,
      this.#closing.signal,
    );
    if (file && this.#dir) {
      try {
        await mkdir(this.#dir, { recursive: true });
        await writeFileAtomic(file, encodeSnapshot(snapshot));
      } catch {
        // The disk copy only saves initialising again at the next start.
      }
    }
    return snapshot;
  }

  /**
   * Drops disk entries of modules not loaded in this run (called once every function is prepared).
   * Only files named as this cache names its entries: the directory may hold other things (a
   * configured cache directory, the VM snapshots beside the modules), which are not the cache's.
   */
  async prune(): Promise<string[]> {
    if (!this.#dir) return [];
    const keep = new Set<string>();
    for (const entry of this.#memory.values()) {
      const compiled = await entry.catch(() => undefined);
      if (compiled) keep.add(compiled.hash);
    }
    const removed: string[] = [];
    for (const name of await readdir(this.#dir).catch(() => [])) {
      const hash = CACHE_ENTRY.exec(name)?.[1];
      if (hash === undefined || keep.has(hash)) continue;
      const path = join(this.#dir, name);
      if (!(await lstat(path).catch(() => undefined))?.isFile()) continue;
      await rm(path, { force: true });
      removed.push(name);
    }
    return removed;
  }

  /** Ends the checker's thread and any initialisation under way. */
  async close(): Promise<void> {
    this.#closing.abort();
    await this.#checker.close();
  }
}
