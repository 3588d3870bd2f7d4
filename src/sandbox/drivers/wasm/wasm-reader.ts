/**
 * Reads a WebAssembly binary: LEB128 numbers, value types, and where each instruction ends, with
 * the immediates of every opcode the rewriter accepts (MVP, sign extension, saturating truncation,
 * bulk memory, reference types, multi-value, tail calls, SIMD and relaxed SIMD, threads,
 * multi-memory and memory64 memargs). A rewriter that misjudged one immediate would splice its
 * code into the middle of an instruction, so anything else (exception handling, typed function
 * references, GC, an unassigned opcode) is refused.
 *
 * A reader is a position that reads advance, so walking tens of MiB of code allocates nothing per
 * instruction (memory-limit's `readU32` returns a fresh pair per number, which made a pair per
 * call instruction the bulk of the time of a rewrite).
 */

/** A module the rewriter cannot handle: malformed, or using a feature it does not know. */
export class UnsupportedModuleError extends Error {
  override readonly name = "UnsupportedModuleError";
}

const hex = (n: number): string => `0x${n.toString(16).padStart(2, "0")}`;

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

/** SIMD opcodes below 256 that are not assigned (every other one from 94 to 255 has no immediates). */
const SIMD_GAPS = new Set([
  154, 162, 165, 166, 175, 176, 178, 179, 180, 187, 194, 197, 198, 207, 208, 210, 211, 212, 226, 238,
]);

export class WasmReader {
  constructor(
    readonly bytes: Uint8Array,
    public pos: number,
  ) {}

  byte(): number {
    const byte = this.bytes[this.pos++];
    if (byte === undefined) throw new UnsupportedModuleError(`the module ends early (byte ${this.pos - 1})`);
    return byte;
  }

  /** An unsigned LEB128 number that must fit 32 bits (a count, size or index). */
  u32(): number {
    let result = 0;
    for (let shift = 0; shift < 28; shift += 7) {
      const byte = this.byte();
      result |= (byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return result >>> 0;
    }
    const last = this.byte();
    if (last > 0x0f) throw new UnsupportedModuleError(`a 32-bit number is too large at byte ${this.pos - 1}`);
    return (result | (last << 28)) >>> 0;
  }

  /** Skips one LEB128 number of up to 64 bits, signed or unsigned (only its length matters). */
  skipLeb(): void {
    for (let i = 0; i < 10; i++) if ((this.byte() & 0x80) === 0) return;
    throw new UnsupportedModuleError(`LEB128 number longer than 10 bytes at byte ${this.pos}`);
  }

  /** Skips a value type; the GC proposal's multi-byte reference types are refused. */
  skipValType(): void {
    const at = this.pos;
    if (!isValType(this.byte()))
      throw new UnsupportedModuleError(`unsupported value type ${hex(this.bytes[at]!)} at byte ${at}`);
  }

  /** Skips table or memory limits: flags, minimum, and a maximum when flag bit 0 is set. */
  skipLimits(): void {
    const flags = this.byte();
    this.skipLeb();
    if (flags & 0x01) this.skipLeb();
  }

  /** A block type: empty (0x40), one value type, or a type index as a non-negative signed LEB (s33). */
  private skipBlockType(): void {
    const first = this.bytes[this.pos];
    if (first === 0x40 || isValType(first)) {
      this.pos++;
      return;
    }
    const at = this.pos;
    this.skipLeb();
    // The last byte's bit 6 is the sign: a negative s33 other than the codes above is a GC type.
    if ((this.bytes[this.pos - 1]! & 0x40) !== 0)
      throw new UnsupportedModuleError(`unsupported block type at byte ${at}`);
  }

  /** memarg: alignment (bit 6 set: a memory index follows, multi-memory), then the offset (u64 for memory64). */
  private skipMemarg(): void {
    if (this.u32() & 0x40) this.skipLeb();
    this.skipLeb();
  }

  private skipSimd(at: number): void {
    const op = this.u32();
    if (op <= 11 || op === 92 || op === 93)
      this.skipMemarg(); // loads, store
    else if (op === 12 || op === 13)
      this.pos += 16; // v128.const, i8x16.shuffle
    else if (op >= 21 && op <= 34)
      this.pos += 1; // extract_lane / replace_lane: a lane index
    else if (op >= 84 && op <= 91) {
      this.skipMemarg(); // load/store lane: memarg and lane
      this.pos += 1;
    } else if (
      (op >= 14 && op <= 20) ||
      (op >= 35 && op <= 83) ||
      (op >= 94 && op <= 255 && !SIMD_GAPS.has(op))
    ) {
      // no immediates
    } else if (op >= 0x100 && op <= 0x113) {
      // relaxed SIMD: no immediates
    } else throw new UnsupportedModuleError(`unknown SIMD instruction 0xfd ${op} at byte ${at}`);
  }

  private skipMisc(at: number): void {
    const op = this.u32();
    if (op <= 7) return; // saturating truncation
    switch (op) {
      case 8: // memory.init data memory
      case 10: // memory.copy dst src
      case 12: // table.init elem table
      case 14: // table.copy dst src
        this.skipLeb();
        this.skipLeb();
        return;
      case 9: // data.drop
      case 11: // memory.fill
      case 13: // elem.drop
      case 15: // table.grow
      case 16: // table.size
      case 17: // table.fill
        this.skipLeb();
        return;
    }
    throw new UnsupportedModuleError(`unknown instruction 0xfc ${op} at byte ${at}`);
  }

  private skipAtomic(at: number): void {
    const op = this.u32();
    if (op === 3)
      this.pos += 1; // atomic.fence: one reserved byte
    else if (op <= 2 || (op >= 0x10 && op <= 0x4e)) this.skipMemarg();
    else throw new UnsupportedModuleError(`unknown atomic instruction 0xfe ${op} at byte ${at}`);
  }

  /** Moves past the instruction at the current position. */
  skipInstruction(): void {
    const at = this.pos;
    const op = this.byte();
    if (op >= 0x45 && op <= 0xc4) return; // numeric and sign extension: no immediates
    if (op >= 0x28 && op <= 0x3e) return this.skipMemarg(); // loads and stores
    switch (op) {
      case 0x00: // unreachable
      case 0x01: // nop
      case 0x05: // else
      case 0x0b: // end
      case 0x0f: // return
      case 0x1a: // drop
      case 0x1b: // select
      case 0xd1: // ref.is_null
        return;
      case 0x02: // block
      case 0x03: // loop
      case 0x04: // if
        return this.skipBlockType();
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
        return this.skipLeb();
      case 0x0e: {
        // br_table: a vector of labels, then the default label
        const count = this.u32();
        for (let i = 0; i <= count; i++) this.skipLeb();
        return;
      }
      case 0x11: // call_indirect type table
      case 0x13: // return_call_indirect type table
        this.skipLeb();
        return this.skipLeb();
      case 0x1c: {
        // select with explicit result types
        const count = this.u32();
        for (let i = 0; i < count; i++) this.skipValType();
        return;
      }
      case 0x43: // f32.const
        this.pos += 4;
        return;
      case 0x44: // f64.const
        this.pos += 8;
        return;
      case 0xd0: {
        // ref.null: funcref or externref
        const type = this.byte();
        if (type !== 0x70 && type !== 0x6f)
          throw new UnsupportedModuleError(`unsupported ref.null type at byte ${at}`);
        return;
      }
      case 0xfc:
        return this.skipMisc(at);
      case 0xfd:
        return this.skipSimd(at);
      case 0xfe:
        return this.skipAtomic(at);
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
}
