/** Where the benchmarks keep their figures: `bench/results/<name>.json`, with the machine they ran on. */
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const RESULTS = fileURLToPath(new URL("../../bench/results/", import.meta.url));

/** The machine a run measured; with `withLoad`, its load averages at the end too. */
export function machine(withLoad = false): Record<string, unknown> {
  const m = { cpus: cpus().length, model: cpus()[0]?.model, node: process.version };
  return withLoad ? { ...m, loadavg: loadavg() } : m;
}

/** Writes `bench/results/<file>`: the date and `figures`, as indented JSON. */
export function writeResults(file: string, figures: Record<string, unknown>): void {
  mkdirSync(RESULTS, { recursive: true });
  writeFileSync(
    join(RESULTS, file),
    JSON.stringify({ date: new Date().toISOString(), ...figures }, null, 2) + "\n",
  );
}
