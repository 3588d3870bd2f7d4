import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { instrument } from "../../src/sandbox/drivers/wasm/instrument.js";
import { writeU32 } from "../../src/sandbox/drivers/wasm/memory-limit.js";
import {
  baseline,
  capture,
  decodeSnapshot,
  encodeSnapshot,
  restore,
} from "../../src/sandbox/drivers/wasm/snapshot.js";

const name = (s: string) => [...writeU32(s.length), ...Buffer.from(s)];
const section = (id: number, body: number[]) => [id, ...writeU32(body.length), ...body];
const sleb = (n: bigint): number[] => {
  const out: number[] = [];
  for (;;) {
    const byte = Number(n & 0x7fn);
    n >>= 7n;
    if ((n === 0n && (byte & 0x40) === 0) || (n === -1n && (byte & 0x40) !== 0)) return [...out, byte];
    out.push(byte | 0x80);
  }
};

/**
 * A module shaped like one `instrument.ts` has rewritten (or, without `exportGlobals`, one it
 * has yet to rewrite): one page of memory with "data" at 100,
 * mutable globals exported as `fennec:global:<index>` (an i32 and an i64) and one not exported,
 * and a `wizer.initialize` that grows memory by a page, writes into the new page, zeroes the data
 * segment and sets every global.
 */
function initialisingModule(exportGlobals = true): Uint8Array<ArrayBuffer> {
  const init = [
    0x00, // no locals
    ...[0x41, 1, 0x40, 0x00, 0x1a], // memory.grow 1; drop
    ...[0x41, ...sleb(70000n), 0x41, ...sleb(0x12345678n), 0x36, 0x02, 0x00], // i32.store 70000
    ...[0x41, ...sleb(100n), 0x41, 0, 0x36, 0x02, 0x00], // zero the data segment
    ...[0x41, ...sleb(42n), 0x24, 0], // global 0 = 42
    ...[0x42, ...sleb(2n ** 40n), 0x24, 1], // global 1 = 2^40
    ...[0x41, ...sleb(7n), 0x24, 2], // global 2 = 7 (not exported: a snapshot cannot see it)
    0x0b,
  ];
  const bytes = [
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(1, [1, 0x60, 0, 0]),
    ...section(3, [1, 0]),
    ...section(5, [1, 0x01, 1, 4]),
    ...section(6, [3, 0x7f, 1, 0x41, 1, 0x0b, 0x7e, 1, 0x42, 2, 0x0b, 0x7f, 1, 0x41, 3, 0x0b]),
    ...section(7, [
      exportGlobals ? 4 : 2,
      ...[...name("memory"), 0x02, 0],
      ...(exportGlobals ? [...name("fennec:global:0"), 0x03, 0, ...name("fennec:global:1"), 0x03, 1] : []),
      ...[...name("wizer.initialize"), 0x00, 0],
    ]),
    ...section(10, [1, ...writeU32(init.length), ...init]),
    ...section(11, [1, 0x00, 0x41, ...sleb(100n), 0x0b, 4, ...Buffer.from("data")]),
  ];
  return Uint8Array.from(bytes);
}

const memory = (i: WebAssembly.Instance) =>
  new Uint8Array((i.exports["memory"] as WebAssembly.Memory).buffer);
const global = (i: WebAssembly.Instance, n: number): unknown =>
  (i.exports[`fennec:global:${n}`] as WebAssembly.Global).value;

describe("wasm pre-initialised snapshots", () => {
  const module = new WebAssembly.Module(initialisingModule());
  const initialised = () => {
    const instance = new WebAssembly.Instance(module);
    const initial = baseline(instance);
    (instance.exports["wizer.initialize"] as () => void)();
    return { instance, snapshot: capture(instance, initial) };
  };

  it("a fresh copy restored from the snapshot has the initialised memory and exported globals", () => {
    const { instance, snapshot } = initialised();
    const copy = new WebAssembly.Instance(module);
    assert.equal(Buffer.from(memory(copy).subarray(100, 104)).toString(), "data");
    restore(copy, snapshot);
    assert.equal(memory(copy).byteLength, 2 * 65536, "memory grown as initialisation grew it");
    assert.ok(Buffer.from(memory(copy)).equals(Buffer.from(memory(instance))));
    assert.deepEqual(
      memory(copy).subarray(100, 104),
      new Uint8Array(4),
      "a zeroed data segment stays zeroed",
    );
    assert.equal(global(copy, 0), 42);
    assert.equal(global(copy, 1), 2n ** 40n);
  });

  it("keeps only what initialisation changed", () => {
    const { snapshot } = initialised();
    // The data segment's block and the word written into the grown page: two 4 KiB blocks.
    assert.deepEqual(snapshot.ranges, [
      [0, 4096],
      [65536 + 4096, 4096],
    ]);
    assert.equal(snapshot.data.byteLength, 8192);
  });

  it("reads back from its file format, and refuses a torn file", () => {
    const { snapshot } = initialised();
    const file = encodeSnapshot(snapshot);
    const back = decodeSnapshot(file);
    assert.ok(back);
    assert.deepEqual(back.ranges, snapshot.ranges);
    assert.deepEqual(back.globals, snapshot.globals);
    assert.ok(Buffer.from(back.data).equals(Buffer.from(snapshot.data)));
    assert.equal(decodeSnapshot(file.subarray(0, file.byteLength - 1)), undefined);
    assert.equal(decodeSnapshot(Buffer.from("not a snapshot")), undefined);
  });

  it("keeps a global the module does not export once instrument.ts has exposed it", () => {
    const exposed = instrument(initialisingModule(false), { fuel: false });
    assert.deepEqual(exposed.globals, ["fennec:global:0", "fennec:global:1", "fennec:global:2"]);
    const rewritten = new WebAssembly.Module(exposed.bytes);
    const instance = new WebAssembly.Instance(rewritten);
    const initial = baseline(instance);
    (instance.exports["wizer.initialize"] as () => void)();
    const snapshot = capture(instance, initial);
    assert.deepEqual(snapshot.globals, {
      "fennec:global:0": 42,
      "fennec:global:1": 2n ** 40n,
      "fennec:global:2": 7,
    });
    const copy = new WebAssembly.Instance(rewritten);
    assert.equal(global(copy, 2), 3);
    restore(copy, snapshot);
    assert.equal(global(copy, 2), 7);
  });

  it("refuses a snapshot whose globals the module does not export", () => {
    const { snapshot } = initialised();
    const other = new WebAssembly.Instance(
      new WebAssembly.Module(
        Uint8Array.from([
          ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
          ...section(5, [1, 0x00, 2]),
          ...section(7, [1, ...name("memory"), 0x02, 0]),
        ]),
      ),
    );
    assert.throws(() => restore(other, snapshot), /fennec:global:0/);
  });
});
