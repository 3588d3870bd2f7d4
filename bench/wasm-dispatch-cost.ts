/**
 * The warm `[wasm]` call's CPU on the gateway's thread outside HTTP (issue 11): `Scheduler.invoke`
 * on the real wasm driver with the example echo (`concurrent-requests = 64`), its calls run on this
 * thread, the /stats and Prometheus collectors listening, the answer taken whole as the gateway
 * does. One process, a closed loop of 8 calls in flight, CPU time per call (not wall time: a busy
 * machine moves it less). To compare two builds, copy the compiled file into the other build's
 * `dist/bench/` and run both alternately; compare runs of this file, not its numbers with others.
 * Usage: npm run build && node dist/bench/wasm-dispatch-cost.js [CALLS] [ROUNDS]
 */
import { fileURLToPath } from "node:url";
import { bodyOf, takeWhole } from "../src/core/body.js";
import { PrometheusMetrics } from "../src/metrics/prometheus.js";
import { StatsCollector } from "../src/metrics/stats.js";
import { WasmDriver } from "../src/sandbox/drivers/wasm/driver.js";
import { echoConfig, echoScheduler } from "./echo-scheduler.js";
import { fmt } from "./stats.js";

const CALLS = Number(process.argv[2] ?? 100_000);
const ROUNDS = Number(process.argv[3] ?? 5);
const IN_FLIGHT = 8;
const ECHO = fileURLToPath(new URL("../../examples/registry/echo/echo.wasm", import.meta.url));

const config = echoConfig(
  { kind: "wasm", module: ECHO, memoryMiB: 16, env: {}, dirs: {}, preInitialise: true },
  64,
);

/** What the gateway hands the scheduler for wrk's POST of 18 bytes. */
const headers = {
  host: "127.0.0.1:8123",
  "content-type": "text/plain",
  "content-length": "18",
};
const PAYLOAD = Buffer.from("hello from wrk 18b");

async function main(): Promise<void> {
  const driver = new WasmDriver({});
  const scheduler = echoScheduler(config, driver);

  const stats = new StatsCollector(scheduler.node);
  const metrics = new PrometheusMetrics(
    () => [],
    () => ({ reservedMiB: 0, budgetMiB: 0 }),
    scheduler.node,
  );
  const run = async (n: number) => {
    let left = n;
    await Promise.all(
      Array.from({ length: IN_FLIGHT }, async () => {
        while (left-- > 0) {
          const request = { method: "POST", path: "/", query: "", headers, body: bodyOf(PAYLOAD) };
          const outcome = await scheduler.invoke(config.id, request);
          if ("error" in outcome) throw outcome.error;
          const bytes = takeWhole(outcome.response.body);
          if (!bytes || bytes.byteLength !== PAYLOAD.byteLength) throw new Error("not a whole echo");
        }
      }),
    );
  };
  await run(20_000); // the instance starts, and V8 optimises the path
  const rounds: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const cpu = process.cpuUsage();
    await run(CALLS);
    const used = process.cpuUsage(cpu);
    rounds.push((used.user + used.system) / CALLS);
  }
  if (driver.fastPath.inline < CALLS) throw new Error("the calls did not run on this thread");
  stats.close();
  metrics.close();
  await scheduler.close(0);
  const sorted = [...rounds].sort((a, b) => a - b);
  console.log(
    `Scheduler.invoke → [wasm] echo on this thread, collectors on: median ${fmt(sorted[Math.floor(ROUNDS / 2)]!, 2)} µs CPU per call, min ${fmt(sorted[0]!, 2)} (rounds ${rounds.map((x) => fmt(x, 2)).join(", ")}; ${CALLS} calls each, ${IN_FLIGHT} in flight)`,
  );
}

void main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
