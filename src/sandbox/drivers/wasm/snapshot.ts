/**
 * Pre-initialised snapshots (Wizer's convention, Faasm's proto-Faaslets): the state a module's
 * `wizer.initialize` leaves behind, so every call can start from it instead of initialising again.
 * A snapshot is what differs from a freshly instantiated copy: linear memory's size, the ranges of
 * memory that changed, and the value of every mutable global the module exposes. Globals are found
 * by name: `fennec:global:<index>`, the exports `instrument.ts` adds for every defined mutable
 * global (the module checker rewrites every module that exports `wizer.initialize` so). A global
 * not exposed so is not kept: it starts each call at its initial value.
 */
import { PAGE_BYTES } from "./memory-limit.js";

/** Exports holding a module's mutable globals (see the module comment). */
export const GLOBAL_EXPORT_PREFIX = "fennec:global:";
/** The export a module initialises itself with, as Wizer names it. */
export const INITIALIZE_EXPORT = "wizer.initialize";
/** Memory is compared in blocks this large: small enough to keep a sparse snapshot small. */
const BLOCK = 4096;

/** A global's value: numbers (i32, f32, f64), bigints (i64), or a null reference. */
export type GlobalValue = number | bigint | null;

export interface Snapshot {
  /** Linear memory's size once initialised (it may have grown). */
  readonly memoryBytes: number;
  /** Changed memory ranges: `[offset, length]`, their bytes one after another in `data`. */
  readonly ranges: ReadonlyArray<readonly [offset: number, length: number]>;
  readonly data: Uint8Array;
  /** Export name -> value. */
  readonly globals: Readonly<Record<string, GlobalValue>>;
}

function memoryOf(instance: WebAssembly.Instance): WebAssembly.Memory {
  const memory = instance.exports["memory"];
  if (!(memory instanceof WebAssembly.Memory)) throw new Error("the module exports no memory");
  return memory;
}

/** A copy of a fresh instance's memory, taken before initialising: what `capture` compares with. */
export function baseline(instance: WebAssembly.Instance): Uint8Array {
  return new Uint8Array(memoryOf(instance).buffer.slice(0));
}

/**
 * The state of an initialised instance, against `initial` (its memory as instantiated, from
 * `baseline`). Refuses a global whose value cannot leave the instance (a non-null reference).
 */
export function capture(instance: WebAssembly.Instance, initial: Uint8Array): Snapshot {
  const now = new Uint8Array(memoryOf(instance).buffer);
  const zero = new Uint8Array(BLOCK);
  const ranges: Array<[number, number]> = [];
  let size = 0;
  for (let at = 0; at < now.byteLength; at += BLOCK) {
    const block = now.subarray(at, at + BLOCK);
    const before =
      at < initial.byteLength ? initial.subarray(at, at + BLOCK) : zero.subarray(0, block.length);
    if (Buffer.compare(block, before) === 0) continue;
    const last = ranges.at(-1);
    if (last && last[0] + last[1] === at) last[1] += block.length;
    else ranges.push([at, block.length]);
    size += block.length;
  }
  const data = new Uint8Array(size);
  let pos = 0;
  for (const [offset, length] of ranges) {
    data.set(now.subarray(offset, offset + length), pos);
    pos += length;
  }
  const globals: Record<string, GlobalValue> = {};
  for (const [name, value] of Object.entries(instance.exports)) {
    if (!name.startsWith(GLOBAL_EXPORT_PREFIX) || !(value instanceof WebAssembly.Global)) continue;
    const v: unknown = value.value;
    if (typeof v !== "number" && typeof v !== "bigint" && v !== null)
      throw new Error(`global ${name} holds a reference, which a snapshot cannot keep`);
    globals[name] = v;
  }
  return { memoryBytes: now.byteLength, ranges, data, globals };
}

/**
 * Puts a snapshot into a freshly instantiated copy of the module it was captured from: grows
 * memory to the snapshot's size, writes the changed ranges and sets the globals. Only ranges that
 * changed are written, so restoring costs what initialisation changed, not the memory's size.
 */
export function restore(instance: WebAssembly.Instance, snapshot: Snapshot): void {
  const memory = memoryOf(instance);
  const missing = snapshot.memoryBytes - memory.buffer.byteLength;
  if (missing > 0) memory.grow(missing / PAGE_BYTES);
  const bytes = new Uint8Array(memory.buffer);
  let pos = 0;
  for (const [offset, length] of snapshot.ranges) {
    bytes.set(snapshot.data.subarray(pos, pos + length), offset);
    pos += length;
  }
  for (const [name, value] of Object.entries(snapshot.globals)) {
    const global = instance.exports[name];
    if (!(global instanceof WebAssembly.Global))
      throw new Error(`the snapshot sets global ${name}, which the module does not export`);
    global.value = value;
  }
}

const MAGIC = "fennec-snapshot-1\n";

/** The snapshot as one file: a JSON head (its length first) then the changed bytes. */
export function encodeSnapshot(snapshot: Snapshot): Uint8Array {
  const globals = Object.entries(snapshot.globals).map(([name, v]) =>
    typeof v === "bigint" ? [name, "i64", v.toString()] : [name, "num", v],
  );
  const head = Buffer.from(
    JSON.stringify({ memoryBytes: snapshot.memoryBytes, ranges: snapshot.ranges, globals }),
  );
  const length = Buffer.alloc(4);
  length.writeUInt32LE(head.byteLength);
  return Buffer.concat([Buffer.from(MAGIC), length, head, snapshot.data]);
}

/** Reads `encodeSnapshot`'s format back; undefined for anything else (a torn or foreign file). */
export function decodeSnapshot(file: Uint8Array): Snapshot | undefined {
  const buf = Buffer.from(file.buffer, file.byteOffset, file.byteLength);
  if (buf.subarray(0, MAGIC.length).toString() !== MAGIC) return undefined;
  try {
    const headLength = buf.readUInt32LE(MAGIC.length);
    const headEnd = MAGIC.length + 4 + headLength;
    const head = JSON.parse(buf.subarray(MAGIC.length + 4, headEnd).toString()) as {
      memoryBytes: number;
      ranges: Array<[number, number]>;
      globals: Array<[string, "i64" | "num", string | number | null]>;
    };
    const data = new Uint8Array(buf.subarray(headEnd));
    if (data.byteLength !== head.ranges.reduce((n, [, length]) => n + length, 0)) return undefined;
    // Every range inside the memory it restores, so a damaged file is re-initialised, not a trap.
    if (
      head.ranges.some(([offset, length]) => offset < 0 || length < 0 || offset + length > head.memoryBytes)
    )
      return undefined;
    const globals: Record<string, GlobalValue> = {};
    for (const [name, type, v] of head.globals)
      globals[name] = type === "i64" ? BigInt(v as string) : (v as number | null);
    return { memoryBytes: head.memoryBytes, ranges: head.ranges, data, globals };
  } catch {
    return undefined;
  }
}
