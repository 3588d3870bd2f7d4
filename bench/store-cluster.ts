/**
 * Async calls through the cluster's store (JetStream) against the embedded one (SQLite), side by
 * side in one run: accepted enqueues per second at 1, 16, 64 and 256 in flight (each waits until
 * its call is durable, as the 202 does), then how fast one node drains them (take 16, finish each).
 * The JetStream store runs against a nats-server of its own (Debian's, file storage in a temp dir,
 * as test/helpers/nats.ts starts it) on loopback: the network cost is a local socket's.
 * With --replicas: the JetStream store alone on a three-server NATS cluster on loopback
 * (test/helpers/nats-cluster.ts), one replica against three (`--cluster-replicas`), in the order
 * R1, R3, R3, R1 so a drift of the machine's load weighs on both alike.
 * Usage: npm run build && node dist/bench/store-cluster.js [--quick] [--replicas]
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { connect } from "@nats-io/transport-node";
import type { InvocationStore, NewAsyncCall } from "../src/store/contract.js";
import { destroyClusterStore, openClusterStore } from "../src/store/jetstream/open.js";
import { SqliteStore } from "../src/store/sqlite-store.js";
import { startNats } from "../test/helpers/nats.js";
import { startNatsCluster } from "../test/helpers/nats-cluster.js";

const quick = process.argv.includes("--quick");
const body = new Uint8Array(256);
const newCall = (): NewAsyncCall => ({
  id: randomUUID(),
  function: "default/echo",
  request: { method: "POST", path: "/", query: "", headers: { "content-type": "text/plain" }, body },
  submittedAt: Date.now(),
});

async function enqueues(store: InvocationStore, total: number, inFlight: number): Promise<number> {
  const start = performance.now();
  let next = 0;
  const worker = async () => {
    while (next++ < total) await store.enqueue(newCall());
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  return total / ((performance.now() - start) / 1000);
}

/** One node takes 16 at a time and finishes each (as the async engine does), until none is left. */
async function drain(store: InvocationStore): Promise<{ calls: number; perSecond: number }> {
  const start = performance.now();
  let calls = 0;
  for (;;) {
    const batch = await store.take({ node: "bench", max: 16, leaseMs: 60_000, now: Date.now() });
    if (batch.length === 0) break;
    await Promise.all(
      batch.map((l) =>
        store.finish(l.record.id, "bench", {
          state: "succeeded",
          response: { status: 200, headers: [], body },
          figures: {},
        }),
      ),
    );
    calls += batch.length;
  }
  return { calls, perSecond: calls / ((performance.now() - start) / 1000) };
}

async function measure(store: InvocationStore): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const inFlight of [1, 16, 64, 256]) {
    const total = quick ? 300 : inFlight === 1 ? 1_000 : 5_000;
    out.set(`enqueue, ${inFlight} in flight`, await enqueues(store, total, inFlight));
  }
  const d = await drain(store);
  out.set(`take 16 + finish each (all ${d.calls} calls)`, d.perSecond);
  return out;
}

async function main(): Promise<void> {
  console.log(
    `load average before: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`,
  );
  const dir = mkdtempSync(join(tmpdir(), "fennec-store-cluster-bench-"));
  const nats = await startNats();
  const nc = await connect({ servers: nats.url });
  try {
    const sqlite = new SqliteStore(join(dir, "fennec.db"));
    const embedded = await measure(sqlite);
    await sqlite.close();
    const js = await openClusterStore(nc, { prefix: "bench" });
    const cluster = await measure(js);
    await js.close();
    await destroyClusterStore(nc, "bench");
    const rate = (n: number) => `${Math.round(n).toLocaleString("en")}/s`;
    console.log(`| | embedded (SQLite) | cluster (JetStream) | JetStream / SQLite |`);
    console.log(`|---|---:|---:|---:|`);
    for (const [what, s] of embedded) {
      const j = cluster.get(what) ?? NaN;
      console.log(`| ${what} | ${rate(s)} | ${rate(j)} | ${(j / s).toFixed(2)}× |`);
    }
  } finally {
    await nc.close();
    await nats.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  console.log(
    `load average after: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`,
  );
}

/** R1 against R3 on one three-server NATS cluster: each measured twice (R1, R3, R3, R1), averaged. */
async function replicas(): Promise<void> {
  const load = () =>
    loadavg()
      .map((l) => l.toFixed(2))
      .join(" ");
  console.log(`load average before: ${load()}`);
  const cluster = await startNatsCluster(3);
  const nc = await cluster.client();
  const runs = new Map<number, Array<Map<string, number>>>([
    [1, []],
    [3, []],
  ]);
  try {
    for (const [i, n] of [1, 3, 3, 1].entries()) {
      const prefix = `bench-r${n}-${i}`;
      const js = await openClusterStore(nc, { prefix, replicas: n });
      runs.get(n)!.push(await measure(js));
      await js.close();
      await destroyClusterStore(nc, prefix);
      console.log(`R${n} done (load average ${load()})`);
    }
    const mean = (n: number, what: string) =>
      runs.get(n)!.reduce((sum, m) => sum + (m.get(what) ?? NaN), 0) / runs.get(n)!.length;
    const rate = (n: number) => `${Math.round(n).toLocaleString("en")}/s`;
    console.log(`| | R1 (mean of 2) | R3 (mean of 2) | R3 / R1 |`);
    console.log(`|---|---:|---:|---:|`);
    for (const what of runs.get(1)![0]!.keys()) {
      const [r1, r3] = [mean(1, what), mean(3, what)];
      console.log(`| ${what} | ${rate(r1)} | ${rate(r3)} | ${(r3 / r1).toFixed(2)}× |`);
    }
  } finally {
    await nc.close();
    await cluster.stop();
  }
  console.log(`load average after: ${load()}`);
}

await (process.argv.includes("--replicas") ? replicas() : main());
