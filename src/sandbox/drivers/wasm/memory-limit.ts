import { FennecError } from "../../../core/errors.js";

/** One WebAssembly page is 64 KiB. */
export const PAGE_BYTES = 65536;

/** The memory section's id in the binary format. */
const MEMORY_SECTION = 5;

export function readU32(bytes: Uint8Array, pos: number): [value: number, next: number] {
  let result = 0;
  let shift = 0;
  for (;;) {
    const byte = bytes[pos++];
    if (byte === undefined) throw new Error("truncated LEB128");
    result += (byte & 0x7f) * 2 ** shift;
    if ((byte & 0x80) === 0) return [result, pos];
    shift += 7;
    if (shift > 35) throw new Error("LEB128 too long");
  }
}

/** Unsigned LEB128, as the binary format writes every count and size. */
export function writeU32(value: number): number[] {
  const out: number[] = [];
  do {
    let byte = value & 0x7f;
    value = Math.floor(value / 128);
    if (value !== 0) byte |= 0x80;
    out.push(byte);
  } while (value !== 0);
  return out;
}

export interface MemoryLimitResult {
  /** The module with every defined memory's maximum set to at most the limit. */
  readonly bytes: Uint8Array;
  /** Initial pages of the module's memory (0 when it defines none). */
  readonly initialPages: number;
}

/**
 * Caps the linear memory a module may grow to by rewriting the maximum in its memory section.
 * V8 then refuses `memory.grow` beyond the cap (malloc returns NULL), so a memory bomb fails inside
 * its own sandbox instead of eating the node. Why rewrite rather than check after the fact: a grow
 * past the cap must never happen, not merely be noticed.
 *
 * Only the memory section (a few bytes) is rebuilt; every other section is copied as a whole by
 * `Buffer.concat` of subarray views, so a module of tens of MiB costs one copy of its bytes, never
 * a JavaScript array of them (spreading a large section into one overflowed the stack).
 */
export function limitMemory(bytes: Uint8Array, maxPages: number, what: string): MemoryLimitResult {
  if (bytes.length < 8)
    throw new FennecError("FN_BAD_MODULE", `${what}: too short to be a WebAssembly module`);
  const parts: Uint8Array[] = [bytes.subarray(0, 8)];
  let pos = 8;
  let copyFrom = 0;
  let initialPages = 0;
  while (pos < bytes.length) {
    const sectionStart = pos;
    const id = bytes[pos++]!;
    const [size, bodyStart] = readU32(bytes, pos);
    const bodyEnd = bodyStart + size;
    if (bodyEnd > bytes.length) throw new FennecError("FN_BAD_MODULE", `${what}: truncated section ${id}`);
    pos = bodyEnd;
    if (id !== MEMORY_SECTION) continue;
    let p = bodyStart;
    const [count, afterCount] = readU32(bytes, p);
    p = afterCount;
    const body: number[] = writeU32(count);
    for (let i = 0; i < count; i++) {
      const flags = bytes[p++]!;
      if (flags & 0x04) throw new FennecError("FN_BAD_MODULE", `${what}: 64-bit memories are not supported`);
      const [min, afterMin] = readU32(bytes, p);
      p = afterMin;
      let max = maxPages;
      if (flags & 0x01) {
        const [declared, afterMax] = readU32(bytes, p);
        p = afterMax;
        max = Math.min(declared, maxPages);
      }
      if (min > maxPages) {
        throw new FennecError(
          "FN_BAD_MODULE",
          `${what}: the module needs ${(min * PAGE_BYTES) / 2 ** 20} MiB of initial memory, more than its limit of ${(maxPages * PAGE_BYTES) / 2 ** 20} MiB ([wasm] memory)`,
        );
      }
      initialPages = Math.max(initialPages, min);
      body.push(flags | 0x01, ...writeU32(min), ...writeU32(max));
    }
    // Sections before this one are copied as one view; the rebuilt section replaces this one.
    parts.push(bytes.subarray(Math.max(copyFrom, 8), sectionStart));
    parts.push(Uint8Array.from([MEMORY_SECTION, ...writeU32(body.length), ...body]));
    copyFrom = bodyEnd;
  }
  parts.push(bytes.subarray(Math.max(copyFrom, 8)));
  const out = Buffer.concat(parts);
  return { bytes: new Uint8Array(out.buffer, out.byteOffset, out.byteLength), initialPages };
}
