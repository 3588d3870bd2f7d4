/**
 * Where each WebAssembly instruction ends: the immediates of every opcode the rewriter accepts
 * (MVP, sign extension, saturating truncation, bulk memory, reference types, multi-value, tail
 * calls, SIMD and relaxed SIMD, threads, multi-memory and memory64 memargs). A rewriter that
 * misjudged one immediate would splice its code into the middle of an instruction, so anything
 * else (exception handling, typed function references, GC, an unassigned opcode) is refused.
 */
import { readU32 } from "./memory-limit.js";

/** A module the rewriter cannot handle: malformed, or using a feature it does not know. */
export class UnsupportedModuleError extends Error {
  override readonly name = "UnsupportedModuleError";
}

const hex = (n: number): string => `0x${n.toString(16).padStart(2, "0")}`;

/** Skips one LEB128 number of any width up to 64 bits (signed or unsigned: only its length matters). */
export function skipLeb(b: Uint8Array, p: number): number {
  for (let i = 0; i < 10; i++) {
    const byte = b[p++];
    if (byte === undefined) throw new UnsupportedModuleError("truncated LEB128 number");
    if ((byte & 0x80) === 0) return p;
  }
  throw new UnsupportedModuleError("LEB128 number longer than 10 bytes");
}

/** Reads an unsigned LEB128 number that must fit 32 bits (a count, size or index). */
export function u32At(b: Uint8Array, p: number): [value: number, next: number] {
  try {
    return readU32(b, p);
  } catch (err) {
    throw new UnsupportedModuleError(`${(err as Error).message} at byte ${p}`);
  }
}

/** Number types, v128 and the two reference types of the reference-types proposal: one byte each. */
function isValType(byte: number | undefined): boolean {
  return (
    byte === 0x7f ||
    byte === 0x7e ||
    byte === 0x7d ||
    byte === 0x7c ||
    byte === 0x7b ||
    byte === 0x70 ||
    byte === 0x6f
  );
}

/** Skips a value type; the GC proposal's multi-byte reference types are refused. */
export function skipValType(b: Uint8Array, p: number): number {
  if (!isValType(b[p]))
    throw new UnsupportedModuleError(`unsupported value type ${hex(b[p] ?? 0)} at byte ${p}`);
  return p + 1;
}

/** A block type: empty (0x40), one value type, or a type index as a non-negative signed LEB (s33). */
function skipBlockType(b: Uint8Array, p: number): number {
  const first = b[p];
  if (first === 0x40 || isValType(first)) return p + 1;
  const end = skipLeb(b, p);
  // The last byte's bit 6 is the sign: a negative s33 other than the codes above is a GC type.
  if ((b[end - 1]! & 0x40) !== 0) throw new UnsupportedModuleError(`unsupported block type at byte ${p}`);
  return end;
}

/** memarg: alignment (bit 6 set: a memory index follows, multi-memory), then the offset (u64 for memory64). */
function skipMemarg(b: Uint8Array, p: number): number {
  const [align, afterAlign] = u32At(b, p);
  p = afterAlign;
  if (align & 0x40) p = skipLeb(b, p);
  return skipLeb(b, p);
}

/** SIMD opcodes below 256 that are not assigned (every other one from 94 to 255 has no immediates). */
const SIMD_GAPS = new Set([
  154, 162, 165, 166, 175, 176, 178, 179, 180, 187, 194, 197, 198, 207, 208, 210, 211, 212, 226, 238,
]);

function simdEnd(b: Uint8Array, p: number, at: number): number {
  const [op, q] = u32At(b, p);
  if (op <= 11 || op === 92 || op === 93) return skipMemarg(b, q); // loads, splat/extend loads, store
  if (op === 12 || op === 13) return q + 16; // v128.const, i8x16.shuffle
  if (op >= 21 && op <= 34) return q + 1; // extract_lane / replace_lane: a lane index
  if (op >= 84 && op <= 91) return skipMemarg(b, q) + 1; // load/store lane: memarg and lane
  if ((op >= 14 && op <= 20) || (op >= 35 && op <= 83) || (op >= 94 && op <= 255 && !SIMD_GAPS.has(op)))
    return q;
  if (op >= 0x100 && op <= 0x113) return q; // relaxed SIMD
  throw new UnsupportedModuleError(`unknown SIMD instruction 0xfd ${op} at byte ${at}`);
}

function miscEnd(b: Uint8Array, p: number, at: number): number {
  const [op, q] = u32At(b, p);
  if (op <= 7) return q; // saturating truncation
  switch (op) {
    case 8: // memory.init data memory
    case 10: // memory.copy dst src
    case 12: // table.init elem table
    case 14: // table.copy dst src
      return skipLeb(b, skipLeb(b, q));
    case 9: // data.drop
    case 11: // memory.fill
    case 13: // elem.drop
    case 15: // table.grow
    case 16: // table.size
    case 17: // table.fill
      return skipLeb(b, q);
  }
  throw new UnsupportedModuleError(`unknown instruction 0xfc ${op} at byte ${at}`);
}

function atomicEnd(b: Uint8Array, p: number, at: number): number {
  const [op, q] = u32At(b, p);
  if (op === 3) return q + 1; // atomic.fence: one reserved byte
  if (op <= 2 || (op >= 0x10 && op <= 0x4e)) return skipMemarg(b, q);
  throw new UnsupportedModuleError(`unknown atomic instruction 0xfe ${op} at byte ${at}`);
}

/** Returns the position just after the instruction whose opcode is at `p`. */
export function instructionEnd(b: Uint8Array, p: number): number {
  const at = p;
  const op = b[p++];
  if (op === undefined) throw new UnsupportedModuleError("code ends inside a function body");
  if (op >= 0x45 && op <= 0xc4) return p; // numeric and sign extension: no immediates
  if (op >= 0x28 && op <= 0x3e) return skipMemarg(b, p); // loads and stores
  switch (op) {
    case 0x00: // unreachable
    case 0x01: // nop
    case 0x05: // else
    case 0x0b: // end
    case 0x0f: // return
    case 0x1a: // drop
    case 0x1b: // select
    case 0xd1: // ref.is_null
      return p;
    case 0x02: // block
    case 0x03: // loop
    case 0x04: // if
      return skipBlockType(b, p);
    case 0x0c: // br
    case 0x0d: // br_if
    case 0x10: // call
    case 0x12: // return_call
    case 0x20: // local.get
    case 0x21: // local.set
    case 0x22: // local.tee
    case 0x23: // global.get
    case 0x24: // global.set
    case 0x25: // table.get
    case 0x26: // table.set
    case 0x3f: // memory.size (a memory index: one zero byte before multi-memory)
    case 0x40: // memory.grow
    case 0x41: // i32.const
    case 0x42: // i64.const
    case 0xd2: // ref.func
      return skipLeb(b, p);
    case 0x0e: {
      // br_table: a vector of labels, then the default label
      const [count, q] = u32At(b, p);
      p = q;
      for (let i = 0; i <= count; i++) p = skipLeb(b, p);
      return p;
    }
    case 0x11: // call_indirect type table
    case 0x13: // return_call_indirect type table
      return skipLeb(b, skipLeb(b, p));
    case 0x1c: {
      // select with explicit result types
      const [count, q] = u32At(b, p);
      p = q;
      for (let i = 0; i < count; i++) p = skipValType(b, p);
      return p;
    }
    case 0x43: // f32.const
      return p + 4;
    case 0x44: // f64.const
      return p + 8;
    case 0xd0: // ref.null: funcref or externref
      if (b[p] !== 0x70 && b[p] !== 0x6f)
        throw new UnsupportedModuleError(`unsupported ref.null type at byte ${p}`);
      return p + 1;
    case 0xfc:
      return miscEnd(b, p, at);
    case 0xfd:
      return simdEnd(b, p, at);
    case 0xfe:
      return atomicEnd(b, p, at);
    case 0x06: // try
    case 0x07: // catch
    case 0x08: // throw
    case 0x09: // rethrow
    case 0x0a: // throw_ref
    case 0x18: // delegate
    case 0x19: // catch_all
    case 0x1f: // try_table
      throw new UnsupportedModuleError(
        `exception handling (opcode ${hex(op)} at byte ${at}) is not supported`,
      );
    case 0x14: // call_ref
    case 0x15: // return_call_ref
    case 0xd3: // ref.as_non_null
    case 0xd4: // br_on_null
    case 0xd5: // ref.eq
    case 0xd6: // br_on_non_null
    case 0xfb: // GC prefix
      throw new UnsupportedModuleError(
        `typed function references / GC (opcode ${hex(op)} at byte ${at}) are not supported`,
      );
  }
  throw new UnsupportedModuleError(`unknown opcode ${hex(op)} at byte ${at}`);
}
