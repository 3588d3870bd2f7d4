/**
 * The gateway's own cost per call outside HTTP: CPU time per invocation through
 * `Scheduler.invoke` (pool, instance lifecycle, invocation record, diagnostics channel) to the
 * in-memory fake driver, with and without the /stats and Prometheus collectors listening. One
 * process, a closed loop of 8 calls in flight; CPU time, not wall time, so a busy machine moves it
 * less than it moves latency. Compare runs of this file, not its numbers with other benchmarks.
 * Usage: npm run build && node dist/bench/dispatch-cost.js [CALLS]
 */
import { bodyOf, readBody } from "../src/core/body.js";
import { PrometheusMetrics } from "../src/metrics/prometheus.js";
import { StatsCollector } from "../src/metrics/stats.js";
import { FakeDriver } from "../src/sandbox/drivers/fake/driver.js";
import { echoConfig, echoScheduler } from "./echo-scheduler.js";
import { fmt } from "./stats.js";

const CALLS = Number(process.argv[2] ?? 200_000);
const IN_FLIGHT = 8;

const config = echoConfig(
  {
    kind: "container",
    image: "fake",
    handler: undefined,
    memoryMiB: 64,
    runtime: undefined,
    env: {},
    pids: 1024,
    network: "none",
  },
  IN_FLIGHT,
);

const request = {
  method: "POST",
  path: "/",
  query: "",
  headers: {
    host: "127.0.0.1:8123",
    "content-type": "text/plain",
    "user-agent": "wrk",
    "content-length": "18",
  },
};
const PAYLOAD = Buffer.from("hello fennec bench");

async function measure(collectors: boolean): Promise<number> {
  const scheduler = echoScheduler(config, new FakeDriver());

  const stats = collectors ? new StatsCollector(scheduler.node) : undefined;
  const metrics = collectors
    ? new PrometheusMetrics(
        () => [],
        () => ({ reservedMiB: 0, budgetMiB: 0 }),
        scheduler.node,
      )
    : undefined;
  const id = config.id;
  const run = async (n: number) => {
    let left = n;
    await Promise.all(
      Array.from({ length: IN_FLIGHT }, async () => {
        while (left-- > 0) {
          // A body is a stream, read once: every call sends its own and drains its answer.
          const outcome = await scheduler.invoke(id, { ...request, body: bodyOf(PAYLOAD) });
          if ("error" in outcome) throw outcome.error;
          await readBody(outcome.response.body, Number.POSITIVE_INFINITY, () => new Error("unreachable"));
        }
      }),
    );
  };
  await run(Math.min(20_000, CALLS)); // the instance starts, and V8 optimises the path
  const cpu = process.cpuUsage();
  await run(CALLS);
  const used = process.cpuUsage(cpu);
  stats?.close();
  metrics?.close();
  await scheduler.close(0);
  return (used.user + used.system) / CALLS;
}

async function main(): Promise<void> {
  const rows: Array<[string, number[]]> = [
    ["Scheduler.invoke → fake driver, no collectors", []],
    ["... with /stats and Prometheus collectors", []],
  ];
  for (let round = 0; round < 3; round++) {
    rows[0]![1].push(await measure(false));
    rows[1]![1].push(await measure(true));
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[1]!;
  console.log(
    `| path (${CALLS} calls, ${IN_FLIGHT} in flight, 3 rounds) | CPU per call, median (µs) | rounds |`,
  );
  console.log("|---|---|---|");
  for (const [name, xs] of rows)
    console.log(`| ${name} | ${fmt(median(xs), 2)} | ${xs.map((x) => fmt(x, 2)).join(", ")} |`);
}

void main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
