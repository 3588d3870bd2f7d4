/**
 * What fuel costs a CPU-bound module: examples/registry/fib's `_start` (naive recursive fib(n),
 * a call per step, so a fuel check per step) run as compiled by clang, with only its globals
 * exported, and with fuel. The variants take turns, round after round, so a busy machine slows
 * them alike; the first rounds (V8 tiering up) are not counted. The tick does what a host's
 * would: read the clock against a deadline and hand out more fuel.
 * Usage: npm run build && node dist/bench/fuel-overhead.js [N=30] [ROUNDS=30] [FUEL_PER_TICK=100000]
 */
import { readFileSync } from "node:fs";
import { setFlagsFromString } from "node:v8";
import { instrument, TICK_IMPORT } from "../src/sandbox/drivers/wasm/instrument.js";
import { EXAMPLES } from "../test/helpers/paths.js";
import { WasiInstance } from "../test/helpers/wasi-run.js";
import { fmt, summarize } from "./stats.js";

// As the wasm driver does: compile everything up front, not at first call.
setFlagsFromString("--no-wasm-lazy-compilation");

const N = Number(process.argv[2] ?? 30);
const ROUNDS = Number(process.argv[3] ?? 30);
const FUEL_PER_TICK = Number(process.argv[4] ?? 100_000);
const WARMUP_ROUNDS = 3;

const original = readFileSync(`${EXAMPLES}/fib/fib.wasm`);
const variants = [
  { name: "original", bytes: original },
  { name: "globals exported", bytes: instrument(original, { fuel: false }).bytes },
  { name: "fuel", bytes: instrument(original, { fuel: true }).bytes },
].map((v) => ({
  ...v,
  module: new WebAssembly.Module(v.bytes),
  ms: [] as number[],
  cpuMs: [] as number[],
  ticks: 0,
}));

let ticks = 0;
let deadline = 0;
const tick = (): number => {
  ticks++;
  if (performance.now() > deadline) throw new Error("deadline passed");
  return FUEL_PER_TICK;
};
const imports = { [TICK_IMPORT.module]: { [TICK_IMPORT.name]: tick } };
const env = [`QUERY_STRING=n=${N}`];

let expected: string | undefined;
for (let round = 0; round < ROUNDS + WARMUP_ROUNDS; round++) {
  // Rotate who goes first, so no variant always runs right after another's garbage.
  for (let i = 0; i < variants.length; i++) {
    const v = variants[(round + i) % variants.length]!;
    const w = new WasiInstance(v.module, imports);
    ticks = 0;
    deadline = performance.now() + 60_000;
    const t0 = performance.now();
    const cpu0 = process.cpuUsage();
    const out = w.run(env).stdout.toString();
    const cpu = process.cpuUsage(cpu0);
    const ms = performance.now() - t0;
    expected ??= out;
    if (out !== expected)
      throw new Error(`${v.name} printed ${JSON.stringify(out)}, not ${JSON.stringify(expected)}`);
    if (round >= WARMUP_ROUNDS) {
      v.ms.push(ms);
      v.cpuMs.push((cpu.user + cpu.system) / 1000);
      v.ticks = ticks;
    }
  }
}

console.log(
  `fib(${N}) via _start, ${ROUNDS} rounds, ${FUEL_PER_TICK} fuel per tick: ${expected!.trim().split("\n").pop()}`,
);
// CPU time beside wall time: on a shared machine a run also waits for a CPU, which CPU time leaves out.
const base = summarize(variants[0]!.ms).p50;
const cpuBase = summarize(variants[0]!.cpuMs).p50;
for (const v of variants) {
  const s = summarize(v.ms);
  const c = summarize(v.cpuMs);
  console.log(
    `${v.name.padEnd(18)} wall p50 ${fmt(s.p50, 2)} ms (×${fmt(s.p50 / base, 3)})  ` +
      `cpu p50 ${fmt(c.p50, 2)} ms (×${fmt(c.p50 / cpuBase, 3)})  ${v.bytes.length} bytes  ticks/run ${v.ticks}`,
  );
}
