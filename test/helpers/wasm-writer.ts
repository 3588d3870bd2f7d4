/**
 * A small WebAssembly binary writer for tests: builds WAGI commands of any size without a
 * toolchain, so a test can make the module it needs (a data section of tens of MiB, a loop).
 */

import { writeU32 } from "../../src/sandbox/drivers/wasm/memory-limit.js";

const u32 = writeU32;

/** Signed LEB128 (i32.const immediates, block type indices). */
export function i32(value: number): number[] {
  const out: number[] = [];
  for (;;) {
    const byte = value & 0x7f;
    value >>= 7;
    if ((value === 0 && (byte & 0x40) === 0) || (value === -1 && (byte & 0x40) !== 0)) {
      out.push(byte);
      return out;
    }
    out.push(byte | 0x80);
  }
}

/** A UTF-8 name with its length, as imports and exports spell them. */
export function name(s: string): number[] {
  const b = Buffer.from(s, "utf8");
  return [...u32(b.length), ...b];
}

function section(id: number, body: Uint8Array | number[]): Uint8Array {
  const b = body instanceof Uint8Array ? body : Uint8Array.from(body);
  return Buffer.concat([Uint8Array.from([id, ...u32(b.length)]), b]);
}

/** A whole module from its sections, each `[id, body]`, in the order given (keep the spec's order). */
export function wasmModule(
  ...sections: ReadonlyArray<readonly [id: number, body: number[] | Uint8Array]>
): Uint8Array {
  return Buffer.concat([
    Uint8Array.from([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]),
    ...sections.map(([id, body]) => section(id, body)),
  ]);
}

/** A vector: its length, then its items. */
export function vec(items: ReadonlyArray<readonly number[]>): number[] {
  return [...u32(items.length), ...items.flat()];
}

/** A function body: no locals, the instructions, `end`; with its size in front. */
export function body(code: readonly number[]): number[] {
  const b = [0x00, ...code, 0x0b];
  return [...u32(b.length), ...b];
}

const PAGE = 65536;
/** Where the response's iovec and the written count live in linear memory. */
const IOV = 0;
const DATA_AT = 1024;

export interface WagiModuleOptions {
  /** Printed to stdout (WAGI headers, blank line, body); placed at the very end of the data. */
  readonly output: string;
  /** Filler bytes in the data section before the output, so the module is as large as needed. */
  readonly fillerBytes?: number;
  /** `_start` loops forever instead of writing (a runaway). */
  readonly loopForever?: boolean;
}

/**
 * A WASI command exporting `memory` and `_start`, importing only `fd_write`: `_start` writes
 * `output`, which sits after `fillerBytes` of data in one active data segment, so a correct
 * response proves the whole data section was loaded.
 */
export function wagiModule(opts: WagiModuleOptions): Uint8Array {
  const output = Buffer.from(opts.output, "utf8");
  const filler = opts.fillerBytes ?? 0;
  const outputAt = DATA_AT + filler;
  const pages = Math.ceil((outputAt + output.length + 1) / PAGE) + 1;
  const iov = Buffer.alloc(8);
  iov.writeUInt32LE(outputAt, 0);
  iov.writeUInt32LE(output.length, 4);
  const body = opts.loopForever
    ? [0x03, 0x40, 0x0c, 0x00, 0x0b] // loop (empty block type); br 0; end
    : [
        ...[0x41, ...i32(1)], // fd 1
        ...[0x41, ...i32(IOV)], // iovs
        ...[0x41, ...i32(1)], // iovs_len
        ...[0x41, ...i32(8)], // nwritten
        ...[0x10, 0x00], // call fd_write
        0x1a, // drop
      ];
  const code = [0x00, ...body, 0x0b];
  // The filler is a repeating pattern built without a per-byte array.
  const data = Buffer.alloc(filler + output.length, "fennec-filler ");
  output.copy(data, filler);
  const segments = Buffer.concat([
    Uint8Array.from(u32(2)),
    Uint8Array.from([0x00, 0x41, ...i32(IOV), 0x0b, ...u32(iov.length)]),
    iov,
    Uint8Array.from([0x00, 0x41, ...i32(DATA_AT), 0x0b, ...u32(data.length)]),
    data,
  ]);
  return Buffer.concat([
    Uint8Array.from([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]),
    section(1, [
      ...u32(2),
      ...[0x60, 4, 0x7f, 0x7f, 0x7f, 0x7f, 1, 0x7f], // (i32 i32 i32 i32) -> i32
      ...[0x60, 0, 0], // () -> ()
    ]),
    section(2, [...u32(1), ...name("wasi_snapshot_preview1"), ...name("fd_write"), 0x00, ...u32(0)]),
    section(3, [...u32(1), ...u32(1)]),
    section(5, [...u32(1), 0x00, ...u32(pages)]),
    section(7, [...u32(2), ...name("memory"), 0x02, ...u32(0), ...name("_start"), 0x00, ...u32(1)]),
    section(10, [...u32(1), ...u32(code.length), ...code]),
    section(11, segments),
  ]);
}
