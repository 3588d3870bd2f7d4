/**
 * Fennec's core benchmark (issues: core gateway + wasm, and 11, the wasm fast path). One run:
 * - the warm rows (warm.ts): bare node:http, workerd, Fennec → [wasm] and Fennec → [process], all
 *   answering the same echo, and Fennec → [wasm] with --no-records (the cost of call records),
 *   measured side by side with wrk, rounds interleaved; ratios reported;
 * - other functions' latency while one runs away or runs long (neighbours.ts);
 * - wasm cold start, instances per second, idle memory per warm instance (instances.ts);
 * - the thread wake-up floor (thread-wakeup.ts).
 *
 * Usage: npm run bench [-- --quick] [-- --warm-only | --neighbours-only | --instances-only]
 *        [-- --rounds 3 --seconds 5 --threads 1 --connections 8,32 --in-flight 4 --compare DIR
 *        --instance-rounds 3 --rows wasm,wasm-no-records]
 *   --quick            1 round of 1 s per load, fewer instance samples (about a minute)
 *   --warm-only        the warm rows only
 *   --neighbours-only  echo's latency alone, beside runaway calls and beside fib(38) calls only
 *   --instances-only   the wasm instance figures only
 *   --rows             only these warm rows (bare, workerd, wasm, process, wasm-no-records,
 *                      wasm-compare); e.g. `--warm-only --rows wasm,wasm-no-records` for the
 *                      records on/off ratio alone
 *   --in-flight        runaway (or slow) calls kept in flight beside echo (default 4)
 *   --compare          the build in DIR (another checkout, `npm run build` done there) beside this
 *                      one: one more Fennec [wasm] warm row, and its instance figures, rounds
 *                      alternating (--instance-rounds, default 3 with --compare, else 1)
 * Writes bench/results/latest.json (a full run; warm-rows.json with --rows), neighbours.json and instances.json,
 * docs/img/warm-wasm-rps.svg and docs/img/warm-wasm-latency.svg, and prints the tables (markdown).
 * Needs wrk (/usr/bin/wrk, Debian's package).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { basename, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import {
  instancesCompareTable,
  measureInstances,
  stopInstanceBench,
  type InstanceFigures,
} from "./instances.js";
import { measureNeighbours, neighboursTable } from "./neighbours.js";
import { barChart, cdfChart, fromPercentiles } from "./plot.js";
import { machine, writeResults } from "./results.js";
import { fmt } from "./stats.js";
import { threadWakeup } from "./thread-wakeup.js";
import {
  at,
  BODY,
  measureWarm,
  ratios,
  ROW_KEYS,
  type RowKey,
  type WarmOptions,
  type WarmRow,
} from "./warm.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const { values: args } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    "warm-only": { type: "boolean", default: false },
    "neighbours-only": { type: "boolean", default: false },
    "instances-only": { type: "boolean", default: false },
    "in-flight": { type: "string", default: "4" },
    "instance-rounds": { type: "string" },
    rounds: { type: "string" },
    seconds: { type: "string" },
    threads: { type: "string", default: "1" },
    connections: { type: "string", default: "8,32" },
    compare: { type: "string" },
    rows: { type: "string" },
  },
});
const quick = args.quick;
const OPTS: WarmOptions = {
  rounds: Number(args.rounds ?? (quick ? 1 : 3)),
  seconds: Number(args.seconds ?? (quick ? 1 : 5)),
  threads: Number(args.threads),
  connections: args.connections.split(",").map(Number),
  ...(args.compare ? { compare: resolve(args.compare) } : {}),
  ...(args.rows ? { rows: args.rows.split(",") as RowKey[] } : {}),
};
for (const key of OPTS.rows ?? [])
  if (!ROW_KEYS.includes(key)) throw new Error(`--rows: no row ${key} (rows: ${ROW_KEYS.join(", ")})`);
const only = (["warm-only", "neighbours-only", "instances-only"] as const).filter((k) => args[k]);
if (only.length > 1) throw new Error(`--${only.join(" and --")}: choose one`);
const IN_FLIGHT = Number(args["in-flight"]);
const INSTANCE_ROUNDS = Number(args["instance-rounds"] ?? (args.compare && !quick ? 3 : 1));
for (const [k, v] of Object.entries({
  ...OPTS,
  connections: undefined,
  "in-flight": IN_FLIGHT,
  "instance-rounds": INSTANCE_ROUNDS,
}))
  if (typeof v === "number" && !(Number.isInteger(v) && v > 0))
    throw new Error(`--${k} must be a positive integer`);
if (!OPTS.connections.every((c) => Number.isInteger(c) && c > 0))
  throw new Error("--connections must be positive integers, comma-separated (e.g. 8,32)");
const COLOURS: Record<string, string> = {
  bare: "#888",
  workerd: "#f08c00",
  wasm: "#d9480f",
  process: "#1c7ed6",
  "wasm-compare": "#ae3ec9",
  "wasm-no-records": "#f59f00",
};
/** Short row names for the charts' labels. */
const SHORT: Record<string, string> = {
  bare: "bare node:http",
  workerd: "workerd",
  wasm: "Fennec → [wasm]",
  process: "Fennec → [process]",
  "wasm-compare": `Fennec (${args.compare ? basename(resolve(args.compare)) : ""}) → [wasm]`,
  "wasm-no-records": "Fennec --no-records → [wasm]",
};
const load = () =>
  loadavg()
    .map((x) => x.toFixed(2))
    .join(" ");

/** Every phase's cleanup (servers, scratch directories), all run on Ctrl-C or SIGTERM. */
const cleanups: Array<() => Promise<void>> = [];
for (const sig of ["SIGINT", "SIGTERM"] as const)
  process.once(sig, () => {
    stopInstanceBench();
    // All of them before exiting: one phase's finished cleanup must not cut short another's.
    void Promise.allSettled(cleanups.map((c) => c())).finally(() => process.exit(130));
  });
const onSignal = (cleanup: () => Promise<void>): void => void cleanups.push(cleanup);

async function main(): Promise<void> {
  const loadBefore = load();
  if (args["neighbours-only"]) {
    const n = await measureNeighbours({ ...OPTS, inFlight: IN_FLIGHT }, onSignal);
    const loadAfter = load();
    writeResults("neighbours.json", {
      machine: machine(true),
      loadavg: { before: loadBefore, after: loadAfter },
      neighbours: n,
    });
    console.log(`load average before ${loadBefore}, after ${loadAfter}\n${neighboursTable(n)}`);
    return;
  }
  if (args["instances-only"]) {
    const builds = await instances();
    const loadAfter = load();
    writeResults("instances.json", {
      machine: machine(true),
      loadavg: { before: loadBefore, after: loadAfter },
      builds,
    });
    console.log(`load average before ${loadBefore}, after ${loadAfter}`);
    console.log(instanceTable(builds[0]!.rounds[0]!) + instancesCompareTable(builds));
    return;
  }
  const rows = await measureWarm(OPTS, onSignal);
  const r = ratios(rows, [1, ...OPTS.connections]);

  let neighbours: Awaited<ReturnType<typeof measureNeighbours>> | undefined;
  let builds: Awaited<ReturnType<typeof measureInstances>> | undefined;
  let wakeup: Awaited<ReturnType<typeof threadWakeup>> | undefined;
  if (!args["warm-only"]) {
    neighbours = await measureNeighbours({ ...OPTS, inFlight: IN_FLIGHT }, onSignal);
    builds = await instances();
    console.error("thread wake-up floor");
    wakeup = await threadWakeup(quick ? 1000 : 5000);
  }
  const loadAfter = load();

  const instance = builds?.[0]?.rounds[0];
  // Some rows only: their own file, and the full run's results and charts stay as they are.
  writeResults(OPTS.rows ? "warm-rows.json" : "latest.json", {
    machine: machine(true),
    loadavg: { before: loadBefore, after: loadAfter },
    options: { ...OPTS, quick, warmOnly: args["warm-only"], body: BODY, client: "wrk", inFlight: IN_FLIGHT },
    warm: { rows, ratios: r },
    ...(neighbours ? { neighbours } : {}),
    ...(instance ? { instance } : {}),
    ...(builds && builds.length > 1 ? { instanceCompare: builds } : {}),
    ...(wakeup ? { wakeup } : {}),
  });
  if (!OPTS.rows) plots(rows);
  console.log(warmTable(rows, r, loadBefore, loadAfter));
  if (neighbours) console.log(neighboursTable(neighbours));
  if (instance && wakeup) console.log(instanceTable(instance) + wakeupTable(wakeup));
  if (builds) console.log(instancesCompareTable(builds));
}

/** The instance figures of this build (and of --compare's, alternating). */
function instances(): ReturnType<typeof measureInstances> {
  return measureInstances({
    rounds: INSTANCE_ROUNDS,
    samples: quick ? 50 : 200,
    ...(OPTS.compare ? { compare: OPTS.compare } : {}),
  });
}

function warmTable(
  rows: readonly WarmRow[],
  r: Record<string, number>,
  before: string,
  after: string,
): string {
  const cs = OPTS.connections;
  const head = `| server (same echo, POST of ${BODY.length} bytes) | ${cs.map((c) => `req/s -c${c}`).join(" | ")} | p50 -c1 (µs) | p99 -c1 (µs) | server CPU per request -c${cs[0]} (µs) | of which Fennec's main thread (µs) | server cores -c${cs[0]} | wrk cores -c${cs[0]} | errors |`;
  const lines = rows.map((row) => {
    const c1 = at(row, 1);
    const t = at(row, cs[0]!);
    const cell = (x: number | undefined, d = 0) => (x === undefined ? "—" : fmt(x, d));
    const errors = row.loads.reduce((s, l) => s + l.errors, 0);
    return `| ${row.name}${row.error ? ` (**failed**: ${row.error.replaceAll("|", "/").replaceAll("\n", " ").slice(0, 200)})` : ""} | ${cs.map((c) => cell(at(row, c)?.rps)).join(" | ")} | ${cell(c1?.latencyUs["50"])} | ${cell(c1?.latencyUs["99"])} | ${cell(t?.serverCpuUsPerRequest)} | ${cell(t?.gatewayThreadCpuUsPerRequest)} | ${cell(t?.serverCores, 2)} | ${cell(t?.clientCores, 2)} | ${errors} |`;
  });
  const x = (k: string) => {
    const v = r[k];
    return v === undefined ? "n/a" : `${fmt(v, 2)}×`;
  };
  const recordsRatio = (c: number) =>
    `-c${c} ${x(`recordsOnOverOffRps_c${c}`)} (${x(`recordsOnOverOffRpsMin_c${c}`)}–${x(`recordsOnOverOffRpsMax_c${c}`)})`;
  const ratioLines = [
    ...cs.map(
      (c) =>
        `- -c${c}: Fennec [wasm] ÷ workerd ${x(`wasmOverWorkerdRps_c${c}`)} (goal ≥ 1), ÷ bare node:http ${x(`wasmOverBareRps_c${c}`)} (goal ≥ 0.40); [process] ÷ workerd ${x(`processOverWorkerdRps_c${c}`)}; workerd ÷ bare ${x(`workerdOverBareRps_c${c}`)}` +
        (r[`wasmCompareOverWasmRps_c${c}`] !== undefined
          ? `; ${args.compare} ÷ this build ${x(`wasmCompareOverWasmRps_c${c}`)}`
          : ""),
    ),
    `- p50 at 1 connection: Fennec [wasm] ÷ workerd ${x("wasmOverWorkerdP50_c1")} (goal ≤ 1), ÷ bare node:http ${x("wasmOverBareP50_c1")}` +
      (r["wasmCompareOverWasmP50_c1"] !== undefined
        ? `; ${args.compare} ÷ this build ${x("wasmCompareOverWasmP50_c1")}`
        : ""),
    `- call records (issue 12): Fennec [wasm] with records ÷ with --no-records, the median of the rounds' ratios (lowest–highest round) ${[...cs, 1].map(recordsRatio).join(", ")} (goal ≥ 0.95)`,
    `- the client: wrk drove bare node:http to ${x(`bareOverFastestFennecRps_c${cs[0]}`)} the fastest Fennec row at -c${cs[0]}, using ${fmt(
      at(
        rows.find((w) => w.key === "bare"),
        cs[0]!,
      )?.clientCores ?? NaN,
      2,
    )} of its ${Math.min(OPTS.threads, cs[0]!)} thread(s)' core(s) there`,
  ];
  return `
wrk -t${OPTS.threads} -d${OPTS.seconds}s at 1 connection (latency) and ${cs.map((c) => `-c${c}`).join(", ")} (throughput), ${OPTS.rounds} round(s) interleaved, medians; load average before ${before}, after ${after}

${head}
|${"---|".repeat(8 + cs.length)}
${lines.join("\n")}

${ratioLines.join("\n")}
`;
}

function instanceTable(i: InstanceFigures): string {
  return `
| wasm instance | p50 | p99 |
|---|---|---|
| cold start: load + instantiate in an idle executor (ms) | ${fmt(i.coldWithSpareMs.p50, 3)} | ${fmt(i.coldWithSpareMs.p99, 3)} |
| another instance of an already loaded revision (ms) | ${fmt(i.anotherInstanceMs.p50, 3)} | ${fmt(i.anotherInstanceMs.p99, 3)} |
| cold start in a burst of 50 (ms) | ${fmt(i.coldBurstMs.p50, 2)} | ${fmt(i.coldBurstMs.p99, 2)} |
| first invocation on a new instance (ms) | ${fmt(i.firstInvokeMs.p50, 3)} | ${fmt(i.firstInvokeMs.p99, 3)} |

instances created per second (burst of 50): ${fmt(i.instancesPerSecond, 0)}
idle memory per warm instance: ${fmt(i.idleMiBPerInstance, 2)} MiB
`;
}

function wakeupTable(wakeup: Awaited<ReturnType<typeof threadWakeup>>): string {
  return `
| worker message round trip (µs) | p50 | main-thread CPU per message |
|---|---|---|
| worker sleeps between messages | ${fmt(wakeup.sleeping.rttUs.p50)} | ${fmt(wakeup.sleeping.mainCpuUsPerMessage)} µs |
| worker polls (never sleeps) | ${fmt(wakeup.polling.rttUs.p50)} | ${fmt(wakeup.polling.mainCpuUsPerMessage)} µs |
`;
}

/** req/s per row at each load (bars), and the latency distribution at 1 connection (CDFs). */
function plots(rows: readonly WarmRow[]): void {
  const img = join(ROOT, "docs", "img");
  mkdirSync(img, { recursive: true });
  const shades = ["#495057", "#868e96", "#ced4da"];
  writeFileSync(
    join(img, "warm-wasm-rps.svg"),
    barChart(
      `Warm echo throughput, wrk -t${OPTS.threads}, median of ${OPTS.rounds} round(s)`,
      "requests per second",
      rows.map((r) => SHORT[r.key] ?? r.name),
      OPTS.connections.map((c, k) => ({
        label: `${c} connections`,
        colour: shades[k % shades.length]!,
        values: rows.map((r) => at(r, c)?.rps),
      })),
    ),
  );
  const measured = rows.filter((r) => at(r, 1) !== undefined);
  if (measured.length === 0) return;
  writeFileSync(
    join(img, "warm-wasm-latency.svg"),
    cdfChart(
      "Warm echo latency at 1 connection (wrk percentiles, medians over rounds, up to p99)",
      "latency (µs, logarithmic)",
      measured.map((r) => ({
        label: `${SHORT[r.key] ?? r.name} (p50 ${fmt(at(r, 1)!.latencyUs["50"]!, 0)} µs)`,
        colour: COLOURS[r.key] ?? "#000",
        values: fromPercentiles(at(r, 1)!.latencyUs),
      })),
      0.99,
      true,
    ),
  );
}

await main();
