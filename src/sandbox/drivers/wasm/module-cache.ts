import { createHash } from "node:crypto";
import { lstat, mkdir, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { setFlagsFromString } from "node:v8";
import { FennecError } from "../../../core/errors.js";
import { writeFileAtomic } from "../../../registry/atomic-write.js";
import { limitMemory, PAGE_BYTES } from "./memory-limit.js";

// Node 20's V8 compiles wasm functions lazily, at their first call, in whichever thread makes it.
// Compiling eagerly makes compilation happen once, here, when a module is prepared; a cold start
// is then only an instantiation (measured: a first call of echo drops from 2.6 ms to 0.6 ms).
// V8 flags are process-wide, so this also covers the worker threads.
setFlagsFromString("--no-wasm-lazy-compilation");

/** Node's buffers are never shared memory here; this tells the DOM-typed WebAssembly API so. */
function source(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return bytes as Uint8Array<ArrayBuffer>;
}

/** A disk cache entry's name: `<sha-256 of the module>-<memory limit in MiB>.wasm`. */
const CACHE_ENTRY = /^([0-9a-f]{64})-\d+\.wasm$/;

/** The only import namespace the wasm sandbox grants. */
export const GRANTED_IMPORT_MODULE = "wasi_snapshot_preview1";

export interface CompiledModule {
  readonly module: WebAssembly.Module;
  readonly hash: string;
  readonly maxMemoryBytes: number;
}

/**
 * Checks a module against what the sandbox grants. Used at upload, at deploy and at load, so a
 * hostile or broken module is refused with the same words everywhere.
 */
export function checkModule(module: WebAssembly.Module, what: string): void {
  const forbidden = WebAssembly.Module.imports(module)
    .filter((i) => i.module !== GRANTED_IMPORT_MODULE || i.kind !== "function")
    .map((i) => `${i.module}.${i.name} (${i.kind})`);
  if (forbidden.length > 0) {
    throw new FennecError(
      "FN_BAD_MODULE",
      `${what}: imports ${forbidden.join(", ")}, which the wasm sandbox does not grant (only ${GRANTED_IMPORT_MODULE} functions)`,
    );
  }
  const exports = new Map(WebAssembly.Module.exports(module).map((e) => [e.name, e.kind]));
  if (exports.get("_start") !== "function")
    throw new FennecError(
      "FN_BAD_MODULE",
      `${what}: exports no _start function (build it as a WASI command)`,
    );
  if (exports.get("memory") !== "memory")
    throw new FennecError("FN_BAD_MODULE", `${what}: exports no memory`);
}

/** Validates raw bytes as a module the sandbox can run (upload-time check, no caching). */
export async function validateModuleBytes(
  bytes: Uint8Array,
  maxMemoryMiB: number,
  what: string,
): Promise<void> {
  if (!WebAssembly.validate(source(bytes)))
    throw new FennecError("FN_BAD_MODULE", `${what}: not a valid WebAssembly module`);
  const limited = limitMemory(bytes, (maxMemoryMiB * 2 ** 20) / PAGE_BYTES, what);
  checkModule(await WebAssembly.compile(source(limited.bytes)), what);
}

/**
 * Compiled modules, cached in memory by content hash and memory limit, so a cold start is an
 * instantiation, not a compile. The disk cache keeps the checked, memory-capped module bytes
 * keyed the same way, so a restart skips validation and rewriting. (Node exposes no API to
 * persist V8's compiled wasm code, so a restart still compiles each module once, at first use.)
 */
export class ModuleCache {
  readonly #memory = new Map<string, Promise<CompiledModule>>();
  /** (path, revision, limit) -> module: a cold start of an unchanged function reads no file. */
  readonly #byRevision = new Map<string, Promise<CompiledModule>>();
  readonly #dir: string | undefined;

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
      if (!used.has(await settled(entry))) this.#memory.delete(key);
    }
  }

  async get(path: string, maxMemoryMiB: number, what: string): Promise<CompiledModule> {
    let raw: Uint8Array;
    try {
      raw = await readFile(path);
    } catch (err) {
      throw new FennecError(
        "FN_BAD_MODULE",
        `${what}: cannot read module ${path}: ${(err as Error).message}`,
      );
    }
    const hash = createHash("sha256").update(raw).digest("hex");
    const key = `${hash}-${maxMemoryMiB}`;
    let entry = this.#memory.get(key);
    if (!entry) {
      entry = this.#compile(raw, hash, key, maxMemoryMiB, what);
      this.#memory.set(key, entry);
      entry.catch(() => this.#memory.delete(key));
    }
    return entry;
  }

  async #compile(
    raw: Uint8Array,
    hash: string,
    key: string,
    maxMemoryMiB: number,
    what: string,
  ): Promise<CompiledModule> {
    const maxMemoryBytes = maxMemoryMiB * 2 ** 20;
    const cached = this.#dir
      ? await readFile(join(this.#dir, `${key}.wasm`)).catch(() => undefined)
      : undefined;
    if (cached) {
      return { module: await WebAssembly.compile(source(cached)), hash, maxMemoryBytes };
    }
    if (!WebAssembly.validate(source(raw)))
      throw new FennecError("FN_BAD_MODULE", `${what}: not a valid WebAssembly module`);
    const limited = limitMemory(raw, maxMemoryBytes / PAGE_BYTES, what);
    const module = await WebAssembly.compile(source(limited.bytes));
    checkModule(module, what);
    if (this.#dir) {
      await mkdir(this.#dir, { recursive: true });
      await writeFileAtomic(join(this.#dir, `${key}.wasm`), limited.bytes);
    }
    return { module, hash, maxMemoryBytes };
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
}
