import { unavailableFaasmImports } from "../../src/sandbox/drivers/wasm/faasm-imports.js";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Worker } from "node:worker_threads";
import { FUEL_EXPORT, instrument, TICK_IMPORT } from "../../src/sandbox/drivers/wasm/instrument.js";
import { limitMemory, writeU32 } from "../../src/sandbox/drivers/wasm/memory-limit.js";
import { UnsupportedModuleError } from "../../src/sandbox/drivers/wasm/wasm-reader.js";
import { EXAMPLES, WASM_FIXTURES } from "../helpers/paths.js";
import type { FuelJob, FuelResult } from "../helpers/fuel-worker.js";
import { WasiInstance } from "../helpers/wasi-run.js";
import { body, i32, name, vec, wasmModule } from "../helpers/wasm-writer.js";

type Exports = Record<string, unknown>;

const f32 = (x: number) => [...Buffer.from(new Float32Array([x]).buffer)];
const f64 = (x: number) => [...Buffer.from(new Float64Array([x]).buffer)];
const v128 = (...lanes: number[]) => [...Buffer.from(new Int32Array(lanes).buffer)];

/** Every committed module: the examples' and the test fixtures'. */
function committedModules(): { file: string; bytes: Buffer }[] {
  const out: { file: string; bytes: Buffer }[] = [];
  for (const fn of readdirSync(EXAMPLES))
    for (const f of readdirSync(join(EXAMPLES, fn)).filter((n) => n.endsWith(".wasm")))
      out.push({ file: `${fn}/${f}`, bytes: readFileSync(join(EXAMPLES, fn, f)) });
  for (const f of readdirSync(WASM_FIXTURES).filter((n) => n.endsWith(".wasm")))
    out.push({ file: f, bytes: readFileSync(join(WASM_FIXTURES, f)) });
  return out;
}

function compile(bytes: Uint8Array): WebAssembly.Module {
  return new WebAssembly.Module(bytes as Uint8Array<ArrayBuffer>);
}

/**
 * A tick that hands out `fuel` each time and counts its calls; it throws `stop` on call `stopAt`.
 * It also stops a module that runs past a generous deadline, as the host would: a rewrite that
 * broke a module into looping forever fails its test instead of hanging it.
 */
function ticker(fuel: number, stopAt = Infinity): { tick: () => number; calls: () => number; stop: Error } {
  let calls = 0;
  const stop = new Error("fuel: stopped");
  const deadline = performance.now() + 60_000;
  return {
    tick: () => {
      if (++calls >= stopAt) throw stop;
      if (performance.now() > deadline) throw new Error("fuel: ran past its deadline");
      return fuel;
    },
    calls: () => calls,
    stop,
  };
}

function fuelImports(tick: () => number): WebAssembly.Imports {
  return { [TICK_IMPORT.module]: { [TICK_IMPORT.name]: tick } };
}

/** What a run of `_start` showed: its output, exit code, or the error it failed with. */
function outcome(w: WasiInstance, env: string[], stdin: Uint8Array): string {
  try {
    const r = w.run(env, stdin);
    return `exit ${r.exitCode}\n${r.stdout.toString("latin1")}`;
  } catch (err) {
    return `error ${(err as Error).constructor.name}: ${(err as Error).message}`;
  }
}

// Sample inputs: every module gets the same environment and body, with a query string of its own.
const QUERY: Record<string, string> = {
  "fib.wasm": "n=20",
  "fnptr.wasm": "11",
  "flood.wasm": "1",
  "cat.wasm": "/x",
};
const env = (file: string): string[] => [
  `QUERY_STRING=${QUERY[file.split("/").pop()!] ?? "name=ann"}`,
  "REQUEST_METHOD=POST",
  "PATH_INFO=/a/b",
  "CONTENT_TYPE=text/plain",
];
const STDIN = Buffer.from("line one\nline two\n");
// Never run: loop never ends without fuel, forbidden-import needs a host function nobody provides.
const NOT_RUN = new Set(["loop.wasm", "forbidden-import.wasm", "not-wasm.wasm"]);

describe("wasm instrument: committed modules", () => {
  for (const { file, bytes } of committedModules()) {
    if (file === "not-wasm.wasm") {
      it(`refuses ${file}`, () => {
        assert.throws(() => instrument(bytes, { fuel: true }), UnsupportedModuleError);
      });
      continue;
    }
    it(`${file}: both variants validate, export the mutable globals and behave like the original`, () => {
      // membomb grows until malloc fails: cap it, as the driver does (the two rewrites compose).
      const source = file === "membomb.wasm" ? limitMemory(bytes, 64, file).bytes : bytes;
      const plain = instrument(source, { fuel: false });
      const fuelled = instrument(source, { fuel: true });
      for (const variant of [plain, fuelled]) {
        assert.ok(WebAssembly.validate(variant.bytes), `${file} validates`);
        assert.equal(variant.statefulBeyondMemory, false);
        // clang's modules define one mutable global, __stack_pointer.
        assert.deepEqual(variant.globals, ["fennec:global:0"]);
      }
      const exported = WebAssembly.Module.exports(compile(fuelled.bytes)).map((e) => e.name);
      assert.ok(exported.includes("fennec:global:0") && exported.includes(FUEL_EXPORT));
      assert.ok(
        WebAssembly.Module.imports(compile(fuelled.bytes)).some(
          (i) => i.module === TICK_IMPORT.module && i.name === TICK_IMPORT.name && i.kind === "function",
        ),
      );
      if (NOT_RUN.has(file)) return;
      // A Faasm function gets host calls that trap alike in every variant (it stops at its first).
      const faasm = WebAssembly.Module.imports(compile(source)).some((i) => i.module === "env")
        ? unavailableFaasmImports("in this test")
        : {};
      const expected = outcome(new WasiInstance(compile(source), faasm), env(file), STDIN);
      assert.equal(outcome(new WasiInstance(compile(plain.bytes), faasm), env(file), STDIN), expected);
      const fuel = ticker(1000);
      assert.equal(
        outcome(
          new WasiInstance(compile(fuelled.bytes), { ...faasm, ...fuelImports(fuel.tick) }),
          env(file),
          STDIN,
        ),
        expected,
      );
      assert.ok(fuel.calls() > 0, "the fuelled module called tick");
    });
  }

  it("the sample outputs are what the examples print", () => {
    const run = (dir: string, file: string) =>
      outcome(
        new WasiInstance(compile(instrument(readFileSync(join(EXAMPLES, dir, file)), { fuel: true }).bytes), {
          ...fuelImports(ticker(1000).tick),
        }),
        env(file),
        STDIN,
      );
    assert.equal(run("fib", "fib.wasm"), "exit 0\nContent-Type: text/plain\n\nfib(20) = 6765\n");
    assert.equal(
      run("hello", "hello.wasm"),
      "exit 0\nContent-Type: text/plain\n\nHello from Fennec (WebAssembly)!, ann\n",
    );
    assert.equal(run("echo", "echo.wasm"), "exit 0\nContent-Type: text/plain\n\nline one\nline two\n");
  });
});

const STOPPED = "stopped by tick";

/**
 * Runs a fuelled module in a worker (helpers/fuel-worker.ts). A module that never ticks would run
 * forever: after a generous deadline the worker is terminated and the test fails instead of hanging.
 */
async function runInWorker(job: Omit<FuelJob, "stopMessage">): Promise<FuelResult> {
  const workerData: FuelJob = { ...job, stopMessage: STOPPED };
  const worker = new Worker(new URL("../helpers/fuel-worker.js", import.meta.url), { workerData });
  const deadline = setTimeout(() => void worker.terminate(), 60_000);
  try {
    return await new Promise<FuelResult>((resolve, reject) => {
      worker.once("message", resolve);
      worker.once("error", reject);
      worker.once("exit", () => reject(new Error("the module ran for 60 s without being stopped by a tick")));
    });
  } finally {
    clearTimeout(deadline);
    await worker.terminate();
  }
}

describe("wasm instrument: fuel stops runaways", () => {
  it("an infinite loop (C) calls tick, and a tick that throws stops it", async () => {
    const fuelled = instrument(readFileSync(join(WASM_FIXTURES, "loop.wasm")), { fuel: true });
    const r = await runInWorker({ bytes: fuelled.bytes, entry: "_start", fuel: 10_000, stopAt: 5 });
    assert.deepEqual(r, { ticks: 5, outcome: STOPPED });
  });

  // (func $f (call $f)) and (func $f (return_call $f)): no loop anywhere, so only the check at
  // function entry can stop them. The tail-recursive one would run forever unchecked.
  for (const [what, op] of [
    ["unbounded recursion", 0x10],
    ["unbounded tail recursion", 0x12],
  ] as const) {
    it(`${what} without loops is stopped at a function entry`, async () => {
      const bytes = wasmModule(
        [1, vec([[0x60, 0, 0]])],
        [3, vec([[0]])],
        [7, vec([[...name("run"), 0x00, 0]])],
        [10, vec([body([op, 0])])],
      );
      assert.ok(WebAssembly.validate(bytes as Uint8Array<ArrayBuffer>));
      const fuelled = instrument(bytes, { fuel: true }).bytes;
      const r = await runInWorker({ bytes: fuelled, entry: "run", fuel: 100, stopAt: 7 });
      assert.deepEqual(r, { ticks: 7, outcome: STOPPED });
    });
  }

  it("the number of ticks grows with the work done", () => {
    const fuelled = compile(
      instrument(readFileSync(join(EXAMPLES, "fib", "fib.wasm")), { fuel: true }).bytes,
    );
    const ticks = (n: number) => {
      const fuel = ticker(100);
      const r = new WasiInstance(fuelled, fuelImports(fuel.tick)).run([`QUERY_STRING=n=${n}`]);
      assert.match(r.stdout.toString(), new RegExp(`fib\\(${n}\\) = `));
      return fuel.calls();
    };
    const small = ticks(15);
    const large = ticks(22);
    // fib(22) makes ≈ 29 times the calls fib(15) does.
    assert.ok(large > small * 10, `fib(22) ticked ${large} times, fib(15) ${small} times`);
  });

  it("fuel starts at 0, so the first function entry ticks at once", () => {
    const bytes = wasmModule(
      [1, vec([[0x60, 0, 1, 0x7f]])],
      [3, vec([[0]])],
      [7, vec([[...name("one"), 0x00, 0]])],
      [10, vec([body([0x41, 1])])],
    );
    const fuel = ticker(50);
    const inst = new WebAssembly.Instance(
      compile(instrument(bytes, { fuel: true }).bytes),
      fuelImports(fuel.tick),
    );
    assert.equal((inst.exports["one"] as () => number)(), 1);
    assert.equal(fuel.calls(), 1);
    // One unit of the 50 was used at the entry; the host reads what is left.
    assert.equal((inst.exports[FUEL_EXPORT] as WebAssembly.Global).value, 49);
  });
});

// Every way a module refers to a function by index, after an import (env.log) that keeps its
// index. Types: 0 () -> (), 1 () -> i32, 2 (i32) -> i32, 3 (i32) -> (), 4 () -> funcref.
// Functions: 0 log (imported), 1 $init (start), 2 $two, 3 $add100, 4 $three, 5 $main,
// 6 $tail (return_call $three), 7 $getAdd (ref.func $add100), 8 $four, 9 $five,
// 10 $getFour, 11 $getFive, 12 $passive (table.init from passive segments, call_indirect).
function indexModule(): Uint8Array {
  const ci = (type: number) => [0x11, type, 0x00]; // call_indirect type, table 0
  const refFunc = (f: number) => [0xd2, f, 0x0b];
  const offset = (n: number) => [0x41, ...i32(n), 0x0b];
  return wasmModule(
    [
      1,
      vec([
        [0x60, 0, 0],
        [0x60, 0, 1, 0x7f],
        [0x60, 1, 0x7f, 1, 0x7f],
        [0x60, 1, 0x7f, 0],
        [0x60, 0, 1, 0x70],
      ]),
    ],
    [2, vec([[...name("env"), ...name("log"), 0x00, 3]])],
    [3, vec([[0], [1], [2], [1], [1], [1], [4], [1], [1], [4], [4], [1]])],
    [4, vec([[0x70, 0x00, 3]])],
    [
      6,
      vec([
        [0x7f, 1, ...offset(0)], // global 0: mutable, set by the start function
        [0x70, 0, ...refFunc(3)], // global 1: immutable funcref to $add100
        [0x7f, 1, ...offset(5)], // global 2: mutable
      ]),
    ],
    [
      7,
      vec([
        [...name("main"), 0x00, 5],
        [...name("getAdd"), 0x00, 7],
        [...name("getFour"), 0x00, 10],
        [...name("getFive"), 0x00, 11],
        [...name("passive"), 0x00, 12],
        [...name("fref"), 0x03, 1],
        [...name("g"), 0x03, 0],
      ]),
    ],
    [8, [1]],
    [
      9,
      vec([
        [4, ...offset(0), ...vec([refFunc(2), refFunc(3)])], // active, table 0, expressions
        [0, ...offset(2), ...vec([[4]])], // active, table 0, function indices
        [2, 0, ...offset(1), 0x00, ...vec([[3]])], // active, explicit table
        [6, 0, ...offset(0), 0x70, ...vec([refFunc(2)])], // active, explicit table, expressions
        [1, 0x00, ...vec([[2], [4]])], // passive
        [3, 0x00, ...vec([[8]])], // declarative: the only declaration of $four
        [5, 0x70, ...vec([refFunc(2), [0xd0, 0x70, 0x0b]])], // passive, expressions
        [7, 0x70, ...vec([refFunc(9)])], // declarative, expressions: the only declaration of $five
      ]),
    ],
    [
      10,
      vec([
        body([0x41, 40, 0x24, 0, 0x41, 7, 0x10, 0]), // $init: g = 40; log(7)
        body([0x41, 2]),
        body([0x20, 0, 0x41, ...i32(100), 0x6a]),
        body([0x41, 3]),
        // $main: g + table[0]() + table[1](5) + table[2]() + $tail() = 40 + 2 + 105 + 3 + 3
        body([
          ...[0x23, 0, 0x41, 0, ...ci(1), 0x6a],
          ...[0x41, 5, 0x41, 1, ...ci(2), 0x6a],
          ...[0x41, 2, ...ci(1), 0x6a],
          ...[0x10, 6, 0x6a],
        ]),
        body([0x12, 4]),
        body([0xd2, 3]),
        body([0x41, 4]),
        body([0x41, 5]),
        body([0xd2, 8]),
        body([0xd2, 9]),
        // $passive: table[0] = segment 4[1] ($three), call it; table[0] = segment 6[0] ($two), call it
        body([
          ...[0x41, 0, 0x41, 1, 0x41, 1, 0xfc, 12, 4, 0, 0x41, 0, ...ci(1), 0x41, 10, 0x6c],
          ...[0x41, 0, 0x41, 0, 0x41, 1, 0xfc, 12, 6, 0, 0x41, 0, ...ci(1), 0x6a],
        ]),
      ]),
    ],
  );
}

describe("wasm instrument: function indices", () => {
  it("calls, ref.func, element segments of all 8 kinds, exports and start still name the same functions", () => {
    const original = indexModule();
    assert.ok(WebAssembly.validate(original as Uint8Array<ArrayBuffer>));
    const observe = (bytes: Uint8Array, imports: WebAssembly.Imports = {}) => {
      const logged: number[] = [];
      const inst = new WebAssembly.Instance(compile(bytes), {
        ...imports,
        env: { log: (n: number) => logged.push(n) },
      });
      const x = inst.exports as Exports;
      const call = (f: string) => (x[f] as () => () => number)()();
      return {
        logged,
        g: (x["g"] as WebAssembly.Global).value as number,
        main: (x["main"] as () => number)(),
        fref: ((x["fref"] as WebAssembly.Global).value as (a: number) => number)(1),
        getAdd: (x["getAdd"] as () => (a: number) => number)()(5),
        getFour: call("getFour"),
        getFive: call("getFive"),
        passive: (x["passive"] as () => number)(),
      };
    };
    const expected = observe(original);
    assert.deepEqual(expected, {
      logged: [7],
      g: 40,
      main: 153,
      fref: 101,
      getAdd: 105,
      getFour: 4,
      getFive: 5,
      passive: 32,
    });
    const fuel = ticker(1000);
    const fuelled = instrument(original, { fuel: true });
    assert.deepEqual(observe(fuelled.bytes, fuelImports(fuel.tick)), expected);
    assert.ok(fuel.calls() > 0);
    const plain = instrument(original, { fuel: false });
    assert.deepEqual(observe(plain.bytes), expected);
    for (const r of [fuelled, plain]) {
      assert.deepEqual(r.globals, ["fennec:global:0", "fennec:global:2"]);
      assert.equal(r.statefulBeyondMemory, true, "table.init and elem segments change the table");
    }
  });

  it("a module with function pointers from C (call_indirect, elem) gives the same output", () => {
    const bytes = readFileSync(join(WASM_FIXTURES, "fnptr.wasm"));
    const expected = new WasiInstance(compile(bytes)).run(["QUERY_STRING=5"]).stdout.toString();
    assert.match(expected, /^Content-Type: text\/plain\n\nsub\(5, 3\) = 2\n/);
    const fuelled = compile(instrument(bytes, { fuel: true }).bytes);
    assert.equal(
      new WasiInstance(fuelled, fuelImports(ticker(100).tick)).run(["QUERY_STRING=5"]).stdout.toString(),
      expected,
    );
  });

  it("the name section is dropped with fuel, kept without, and other custom sections stay", () => {
    const custom = (label: string, payload: number[]): [number, number[]] => [
      0,
      [...name(label), ...payload],
    ];
    const bytes = wasmModule(
      custom("producers", [1, 2, 3]),
      [1, vec([[0x60, 0, 0]])],
      [3, vec([[0]])],
      [10, vec([body([])])],
      custom("name", [1, 3, 1, 0, 1, 0x66]), // function names: 0 -> "f"
    );
    const sections = (m: Uint8Array) => WebAssembly.Module.customSections(compile(m), "name").length;
    const producers = (m: Uint8Array) => WebAssembly.Module.customSections(compile(m), "producers").length;
    assert.equal(sections(bytes), 1);
    assert.equal(sections(instrument(bytes, { fuel: true }).bytes), 0);
    assert.equal(sections(instrument(bytes, { fuel: false }).bytes), 1);
    assert.equal(producers(instrument(bytes, { fuel: true }).bytes), 1);
  });
});

/** A copy of an instance's memory and mutable globals, to put back later. */
function snapshot(
  inst: WebAssembly.Instance,
  globals: readonly string[],
): { memory: Uint8Array; globals: unknown[] } {
  const memory = new Uint8Array((inst.exports["memory"] as WebAssembly.Memory).buffer).slice();
  return { memory, globals: globals.map((g): unknown => (inst.exports[g] as WebAssembly.Global).value) };
}

function restore(
  inst: WebAssembly.Instance,
  globals: readonly string[],
  snap: ReturnType<typeof snapshot>,
): void {
  const memory = new Uint8Array((inst.exports["memory"] as WebAssembly.Memory).buffer);
  memory.set(snap.memory);
  memory.fill(0, snap.memory.length); // memory may have grown; a fresh instance has zeros there
  globals.forEach((g, i) => ((inst.exports[g] as WebAssembly.Global).value = snap.globals[i]));
}

describe("wasm instrument: resetting an instance", () => {
  for (const fuel of [false, true]) {
    it(`${fuel ? "fuelled" : "plain"}: memory and globals put back make a stopped instance run like a new one`, () => {
      const r = instrument(readFileSync(join(EXAMPLES, "echo", "echo.wasm")), { fuel });
      const module = compile(r.bytes);
      const stdin = Buffer.from("x".repeat(100_000));
      // A generous tick for a fresh instance's run; a second, stingy one stops the reused instance.
      let stopAfter = Infinity;
      let ticks = 0;
      const stop = new Error("stopped");
      const tick = () => {
        if (++ticks >= stopAfter) throw stop;
        return 1;
      };
      const expected = new WasiInstance(module, fuelImports(tick)).run([], stdin).stdout.toString();
      assert.ok(expected.endsWith("x".repeat(100_000)));
      const checks = ticks; // every check ticks, as tick hands out one unit at a time

      const w = new WasiInstance(module, fuelImports(tick));
      const initial = snapshot(w.instance, r.globals);
      // Stop it inside main, with its 16 KiB buffer on the shadow stack: __stack_pointer is left lowered.
      if (fuel) {
        ticks = 0;
        stopAfter = Math.ceil(checks / 2);
        assert.throws(
          () => w.run([], stdin),
          (err) => err === stop,
        );
        stopAfter = Infinity;
        const sp = (w.instance.exports["fennec:global:0"] as WebAssembly.Global).value as number;
        assert.ok(sp < (initial.globals[0] as number), "the stop left the stack pointer moved");
      } else {
        assert.equal(w.run([], stdin).stdout.toString(), expected);
        // Without the reset a second run sees the first one's end of stdin (a flag in memory).
        assert.notEqual(w.run([], stdin).stdout.toString(), expected);
      }
      restore(w.instance, r.globals, initial);
      if (fuel) (w.instance.exports[FUEL_EXPORT] as WebAssembly.Global).value = 0;
      assert.deepEqual(snapshot(w.instance, r.globals).globals, initial.globals);
      assert.equal(w.run([], stdin).stdout.toString(), expected);
      restore(w.instance, r.globals, initial);
      assert.equal(w.run([], stdin).stdout.toString(), expected);
    });
  }
});

describe("wasm instrument: state beyond memory and globals", () => {
  const withCode = (code: number[], extra: ReadonlyArray<readonly [number, number[]]> = []) =>
    wasmModule(
      [1, vec([[0x60, 0, 0]])],
      ...extra.filter(([id]) => id < 3),
      [3, vec([[0]])],
      ...extra.filter(([id]) => id > 3 && id !== 11 && id !== 12),
      ...extra.filter(([id]) => id === 12),
      [10, vec([body(code)])],
      ...extra.filter(([id]) => id === 11),
    );
  const memory: [number, number[]] = [5, vec([[0x00, 1]])];
  const table: [number, number[]] = [4, vec([[0x70, 0x00, 1]])];
  const passiveData: [number, number[]][] = [
    [12, [1]],
    [11, vec([[0x01, 2, 0xaa, 0xbb]])],
  ];
  const cases: [string, Uint8Array, boolean][] = [
    ["plain code", withCode([0x41, 1, 0x1a], [memory]), false],
    ["memory.init", withCode([0x41, 0, 0x41, 0, 0x41, 1, 0xfc, 8, 0, 0], [memory, ...passiveData]), true],
    ["data.drop", withCode([0xfc, 9, 0], [memory, ...passiveData]), true],
    // A padded LEB128 sub-opcode (0x89 0x00 is 9) is valid: it must be decoded, not compared as a byte.
    ["data.drop with a padded opcode", withCode([0xfc, 0x89, 0x00, 0], [memory, ...passiveData]), true],
    ["table.grow", withCode([0xd0, 0x70, 0x41, 1, 0xfc, 15, 0, 0x1a], [table]), true],
    ["table.set", withCode([0x41, 0, 0xd0, 0x70, 0x26, 0], [table]), true],
    ["table.fill", withCode([0x41, 0, 0xd0, 0x70, 0x41, 1, 0xfc, 17, 0], [table]), true],
    ["table.copy", withCode([0x41, 0, 0x41, 0, 0x41, 1, 0xfc, 14, 0, 0], [table]), true],
    ["an exported table", withCode([], [table, [7, vec([[...name("t"), 0x01, 0]])]]), true],
    ["an imported memory", withCode([], [[2, vec([[...name("env"), ...name("m"), 0x02, 0x00, 1]])]]), true],
    [
      "an imported mutable global",
      withCode([], [[2, vec([[...name("env"), ...name("g"), 0x03, 0x7f, 1]])]]),
      true,
    ],
    [
      "a mutable v128 global",
      withCode([], [[6, vec([[0x7b, 1, 0xfd, 12, ...v128(0, 0, 0, 0), 0x0b]])]]),
      true,
    ],
    ["a mutable i64 global", withCode([], [[6, vec([[0x7e, 1, 0x42, 0, 0x0b]])]]), false],
    ["memory.fill and memory.copy", withCode([0x41, 0, 0x41, 0, 0x41, 1, 0xfc, 11, 0], [memory]), false],
  ];
  for (const [what, bytes, stateful] of cases) {
    it(`${what}: ${stateful ? "stateful" : "resettable"}`, () => {
      assert.ok(WebAssembly.validate(bytes as Uint8Array<ArrayBuffer>), `the ${what} module is valid`);
      for (const fuel of [false, true]) {
        const r = instrument(bytes, { fuel });
        assert.ok(WebAssembly.validate(r.bytes));
        assert.equal(r.statefulBeyondMemory, stateful);
      }
    });
  }
});

/**
 * Instructions with every shape of immediate the decoder must know: SIMD memargs, lanes, v128
 * constants and shuffles; saturating truncation; sign extension; multi-value block and loop types
 * (a type index); br_table; typed select; bulk memory; reference instructions; atomics; tail calls.
 */
function decoderModule(): Uint8Array {
  const sink = [
    ...[0x41, 16, 0xfd, 12, ...v128(1, 2, 3, 4), 0xfd, 11, 4, 0], // v128.store
    ...[0x41, 16, 0xfd, 0, 4, 0, 0xfd, 12, ...v128(10, 20, 30, 40), 0xfd, ...writeU32(174)], // i32x4.add
    ...[0xfd, 12, ...v128(0, 0, 0, 0), 0xfd, 13, ...Array.from({ length: 16 }, (_, i) => i), 0xfd, 27, 1],
    ...[0x41, 16, 0xfd, 12, ...v128(0, 0, 0, 0), 0xfd, 86, 2, 0, 3, 0xfd, 27, 3, 0x6a], // v128.load32_lane
    ...[0x43, ...f32(3.7), 0xfc, 0, 0x6a], // i32.trunc_sat_f32_s
    ...[0x44, ...f64(2.5), 0xfc, 2, 0x6a], // i32.trunc_sat_f64_s
    ...[0x41, ...i32(255), 0xc0, 0x6a], // i32.extend8_s
    ...[0x42, ...i32(127), 0xa7, 0x6a], // i64.const, i32.wrap_i64
    ...[0x02, 2, 0x41, 1, 0x41, 2, 0x0b, 0x6a, 0x6a], // block (type 2): () -> (i32 i32)
    ...[0x41, 5, 0x41, 6, 0x41, 0, 0x1c, 1, 0x7f, 0x6a], // select (result i32)
    ...[0x41, ...i32(100), 0x41, 7, 0x41, 4, 0xfc, 11, 0], // memory.fill
    ...[0x41, ...i32(200), 0x41, ...i32(100), 0x41, 4, 0xfc, 10, 0, 0], // memory.copy
    ...[0x41, ...i32(200), 0x2d, 0, 0, 0x6a], // i32.load8_u
    ...[0x41, 3, 0x03, 3, 0x41, 1, 0x6b, 0x22, 0, 0x20, 0, 0x0d, 0, 0x0b, 0x6a], // loop (type 3), a parameter
    ...[0x02, 0x7f, 0x02, 0x40, 0x02, 0x40, 0x41, 1, 0x0e, 1, 0, 1, 0x0b], // br_table [0] 1
    ...[0x41, ...i32(100), 0x0c, 1, 0x0b, 0x41, 9, 0x0b, 0x6a],
    ...[0xd0, 0x70, 0xd1, 0x6a, 0x3f, 0, 0x6a], // ref.null, ref.is_null, memory.size
    ...[0x41, 0, 0x41, 5, 0xfe, 0x1e, 2, 0, 0x6a, 0xfe, 3, 0], // i32.atomic.rmw.add, atomic.fence
    ...[0x41, 0, 0x28, 2, 0, 0x6a], // i32.load: the atomic add's result
    ...[0x10, 1, 0x6a], // call $tail
  ];
  const withLocals = [1, 1, 0x7f, ...sink, 0x0b]; // one i32 local
  return wasmModule(
    [
      1,
      vec([
        [0x60, 0, 0],
        [0x60, 0, 1, 0x7f],
        [0x60, 0, 2, 0x7f, 0x7f],
        [0x60, 1, 0x7f, 1, 0x7f],
      ]),
    ],
    [3, vec([[1], [1], [1]])],
    [4, vec([[0x70, 0x00, 1]])],
    [5, vec([[0x00, 1]])],
    [7, vec([[...name("sink"), 0x00, 0]])],
    [9, vec([[0, 0x41, 0, 0x0b, ...vec([[2]])]])],
    [
      10,
      vec([
        [...writeU32(withLocals.length), ...withLocals],
        body([0x41, 0, 0x13, 1, 0]), // $tail: return_call_indirect (type 1) table 0
        body([0x41, 7]), // $seven
      ]),
    ],
  );
}

describe("wasm instrument: decoding", () => {
  it("knows the immediates of SIMD, bulk memory, reference, atomic, multi-value and tail-call instructions", () => {
    const original = decoderModule();
    assert.ok(WebAssembly.validate(original as Uint8Array<ArrayBuffer>), "the hand-written module is valid");
    const run = (bytes: Uint8Array, imports: WebAssembly.Imports = {}) =>
      (new WebAssembly.Instance(compile(bytes), imports).exports["sink"] as () => number)();
    const expected = run(original);
    // One unit of fuel per tick: every check ticks.
    const fuel = ticker(1);
    assert.equal(run(instrument(original, { fuel: true }).bytes, fuelImports(fuel.tick)), expected);
    assert.equal(run(instrument(original, { fuel: false }).bytes), expected);
    // The entries of $sink, $tail and $seven, and three turns of the loop.
    assert.equal(fuel.calls(), 6);
  });

  const withBody = (code: number[]) =>
    wasmModule([1, vec([[0x60, 0, 0]])], [3, vec([[0]])], [10, vec([body(code)])]);
  const refused: [string, number[], RegExp][] = [
    ["an unknown opcode", [0xff], /unknown opcode 0xff at byte \d+/],
    ["an unknown 0xfc instruction", [0xfc, 99], /unknown instruction 0xfc 99/],
    ["an unassigned SIMD opcode", [0xfd, ...writeU32(154)], /unknown SIMD instruction 0xfd 154/],
    ["exception handling", [0x06, 0x40, 0x0b], /exception handling .* not supported/],
    ["a GC instruction", [0xfb, 0], /GC .* not supported/],
    ["a body that ends early", [0x02, 0x40], /has no end before byte/],
  ];
  for (const [what, code, message] of refused) {
    it(`refuses ${what} with a clear error, with or without fuel`, () => {
      for (const fuel of [false, true])
        assert.throws(
          () => instrument(withBody(code), { fuel }),
          (err) => err instanceof UnsupportedModuleError && message.test(err.message),
        );
    });
  }

  it("refuses a module that already has an export named like the ones it adds", () => {
    const bytes = wasmModule(
      [1, vec([[0x60, 0, 0]])],
      [3, vec([[0]])],
      [7, vec([[...name(FUEL_EXPORT), 0x00, 0]])],
      [10, vec([body([])])],
    );
    assert.throws(() => instrument(bytes, { fuel: true }), /already exports "fennec:fuel"/);
    assert.ok(WebAssembly.validate(instrument(bytes, { fuel: false }).bytes));
  });

  it("exports a mutable global of a module that has no export section", () => {
    const bytes = wasmModule([6, vec([[0x7e, 1, 0x42, ...i32(-5), 0x0b]])]);
    for (const fuel of [false, true]) {
      const r = instrument(bytes, { fuel });
      assert.deepEqual(r.globals, ["fennec:global:0"]);
      const inst = new WebAssembly.Instance(compile(r.bytes), fuel ? fuelImports(() => 1) : {});
      const g = inst.exports["fennec:global:0"] as WebAssembly.Global;
      assert.equal(g.value, -5n);
      g.value = 7n; // mutable: a reset can set it back
      assert.equal(g.value, 7n);
    }
  });

  it("adds the sections fuel needs to a module that has none of them", () => {
    // Only a function section would need a type section: the empty module, and one with a memory.
    for (const bytes of [wasmModule(), wasmModule([5, vec([[0x00, 1]])])]) {
      const r = instrument(bytes, { fuel: true });
      assert.ok(WebAssembly.validate(r.bytes));
      const m = compile(r.bytes);
      assert.deepEqual(
        WebAssembly.Module.exports(m).map((e) => e.name),
        [FUEL_EXPORT],
      );
      assert.equal(WebAssembly.Module.imports(m).length, 1);
    }
  });
});

describe("wasm instrument: size", () => {
  it("rewrites a module with tens of MiB of code in one pass", () => {
    // 150,000 functions, each a loop around 40 calls to other functions: ≈ 25 MiB of code, and
    // 6 million call indices to renumber.
    const functions = 150_000;
    const callsEach = 40;
    const code = Buffer.alloc(functions * (6 + callsEach * 4 + 2) + 16);
    let p = 0;
    const u32 = (v: number) => {
      for (const b of writeU32(v)) code[p++] = b;
    };
    u32(functions);
    for (let f = 0; f < functions; f++) {
      const sizeAt = p;
      p += 3; // a three-byte size, padded (LEB128 allows it)
      const start = p;
      code[p++] = 0; // no locals
      code[p++] = 0x03; // loop
      code[p++] = 0x40;
      for (let c = 0; c < callsEach; c++) {
        code[p++] = 0x10;
        u32((f * 7 + c * 13) % functions);
      }
      code[p++] = 0x0b;
      code[p++] = 0x0b;
      const size = p - start;
      code[sizeAt] = (size & 0x7f) | 0x80;
      code[sizeAt + 1] = ((size >> 7) & 0x7f) | 0x80;
      code[sizeAt + 2] = size >> 14;
    }
    const funcs = Buffer.alloc(functions + 4);
    let q = 0;
    for (const b of writeU32(functions)) funcs[q++] = b;
    funcs.fill(0, q, q + functions);
    const bytes = wasmModule(
      [1, vec([[0x60, 0, 0]])],
      [3, funcs.subarray(0, q + functions)],
      [10, code.subarray(0, p)],
    );
    const t0 = performance.now();
    const r = instrument(bytes, { fuel: true });
    const t1 = performance.now();
    const plain = instrument(bytes, { fuel: false });
    const t2 = performance.now();
    console.log(
      `# instrumented ${(bytes.length / 2 ** 20).toFixed(1)} MiB: with fuel in ${(t1 - t0).toFixed(0)} ms ` +
        `(${(r.bytes.length / 2 ** 20).toFixed(1)} MiB), without in ${(t2 - t1).toFixed(0)} ms`,
    );
    // Nothing to add without fuel (no mutable globals): the bytes come back unchanged.
    assert.ok(Buffer.from(plain.bytes).equals(Buffer.from(bytes)));
    assert.ok(WebAssembly.validate(r.bytes), "the rewritten module validates");
    // Each function gained two fuel checks (entry, loop) and some call indices a byte.
    assert.ok(r.bytes.length > bytes.length + functions * 2 * 17);
  });
});
