/**
 * The cost of a call record on the gateway's thread (issue 12), measured without HTTP: sync calls
 * go through the sync-call service (src/invocations/invocations.ts) over a scheduler that answers
 * at once, with records on (written behind into SQLite in a file, WAL, as `fennec serve` keeps
 * them) and off, batches alternating; CPU time per call of the gateway's thread (what bounds its
 * throughput) and of the whole process (the store's writer thread included).
 * `npm run bench -- --warm-only --rows wasm,wasm-no-records` measures the same through wrk; on a
 * busy machine this one's figure is the steadier.
 *
 * Usage: npm run bench:records [-- --calls 200000 --rounds 5 --request-us 80]
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { parseArgs } from "node:util";
import { createLogger } from "../src/core/log.js";
import type { InvocationRecord, InvokeRequest } from "../src/core/types.js";
import { Invocations } from "../src/invocations/invocations.js";
import type { Scheduler } from "../src/scheduler/scheduler.js";
import { openStore } from "../src/store/open-store.js";
import { fmt } from "./stats.js";
import { mainThreadCpuSeconds } from "./wrk.js";

const { values: args } = parseArgs({
  options: {
    calls: { type: "string", default: "200000" },
    rounds: { type: "string", default: "5" },
    "request-us": { type: "string", default: "80" },
  },
});
const CALLS = Number(args.calls);
const ROUNDS = Number(args.rounds);
/**
 * The gateway thread's CPU per warm [wasm] echo request without records: 80 µs, about one core at
 * 12,500 req/s, the echo's rate through wrk -c8 on a quiet machine since the wasm fast path
 * (docs/benchmarks.md, "Records handed over as a call's end"; it was 111 µs at 9,000 req/s).
 */
const REQUEST_US = Number(args["request-us"]);

/** A scheduler whose every call has answered: what is left to measure is the service's own work. */
function instantScheduler(): Pick<Scheduler, "invoke"> {
  const body = Readable.from([]);
  const start = {
    node: "bench",
    function: "default/echo",
    instanceId: "i",
    startType: "warm" as const,
    queueWaitMs: 0.01,
    initMs: 0,
  };
  return {
    invoke: () => {
      const record: InvocationRecord = {
        ...start,
        ttfbMs: 0.05,
        execMs: 0.06,
        status: 200,
        errorCode: undefined,
      };
      return Promise.resolve({
        response: { status: 200, headers: [], body },
        start,
        record: Promise.resolve(record),
      });
    },
  };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "fennec-bench-records-"));
  const log = createLogger("silent");
  const store = openStore(dir, { log });
  try {
    const scheduler = instantScheduler();
    const request = {
      method: "POST",
      path: "/",
      query: "",
      headers: {},
      body: Readable.from([]),
    } as InvokeRequest;
    const id = { user: "default", name: "echo" };
    const perCall: Record<"on" | "off", number[]> = { on: [], off: [] };
    const perCallProcess: Record<"on" | "off", number[]> = { on: [], off: [] };
    for (let round = 0; round < ROUNDS + 1; round++) {
      for (const records of [true, false]) {
        const service = new Invocations({ scheduler, store, node: "bench", records, log });
        const cpu = process.cpuUsage();
        const thread = mainThreadCpuSeconds(process.pid);
        for (let i = 0; i < CALLS; i++) {
          await service.invoke(service.newCallId(), id, request, undefined);
          // The event loop turns as it does between requests: the store's batches flush as they fill.
          if (i % 64 === 63) await new Promise((r) => setImmediate(r));
        }
        await new Promise((r) => setImmediate(r));
        await store.flush();
        const used = process.cpuUsage(cpu);
        const threadUs = (mainThreadCpuSeconds(process.pid) - thread) * 1e6;
        // Round 0 warms up (JIT, SQLite's page cache).
        if (round > 0) {
          perCall[records ? "on" : "off"].push(threadUs / CALLS);
          perCallProcess[records ? "on" : "off"].push((used.user + used.system) / CALLS);
        }
      }
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const on = median(perCall.on);
    const off = median(perCall.off);
    const cost = on - off;
    const processOn = median(perCallProcess.on);
    const processOff = median(perCallProcess.off);
    console.log(`
${CALLS} calls × ${ROUNDS} rounds per setting, medians of CPU per call (µs), records in ${store.describe}

| records | gateway thread CPU per call (µs) | whole process (µs) |
|---|---|---|
| on | ${fmt(on, 2)} | ${fmt(processOn, 2)} |
| off | ${fmt(off, 2)} | ${fmt(processOff, 2)} |
| a record's cost | ${fmt(cost, 2)} | ${fmt(processOn - processOff, 2)} |

At ${fmt(REQUEST_US, 0)} µs of gateway-thread CPU per warm [wasm] echo request (--request-us), a record
leaves ${fmt((REQUEST_US / (REQUEST_US + cost)) * 100, 1)} % of the throughput (goal ≥ 95 %); counted in the whole
process's CPU (what bounds throughput when every core is busy), ${fmt(
      (REQUEST_US / (REQUEST_US + processOn - processOff)) * 100,
      1,
    )} %.
`);
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
