/**
 * The embedded invocation store's costs on this machine's disk: accepted enqueues per second one
 * at a time (each waits for its own fsync) and in groups (calls arriving together share one
 * transaction and one fsync), and the main-thread cost of a sync call's record (`record()` plus
 * its share of the write-behind flush), which every sync call pays.
 * Usage: npm run build && node dist/bench/store.js [DIR] (default: a temp dir under the OS's)
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import Database from "better-sqlite3";
import type { CallRecord, NewAsyncCall } from "../src/store/contract.js";
import { BehindWriter } from "../src/store/sqlite/behind-writer.js";
import { RecordBatchBuilder } from "../src/store/sqlite/record-batch.js";
import { migrate } from "../src/store/sqlite/schema.js";
import { SqliteStore } from "../src/store/sqlite-store.js";

const dir = mkdtempSync(join(process.argv[2] ?? tmpdir(), "fennec-store-bench-"));
const body = new Uint8Array(256);
const newCall = (): NewAsyncCall => ({
  id: randomUUID(),
  function: "default/echo",
  request: { method: "POST", path: "/", query: "", headers: { "content-type": "text/plain" }, body },
  submittedAt: Date.now(),
});
const record = (): CallRecord => ({
  id: randomUUID(),
  function: "default/echo",
  kind: "sync",
  state: "succeeded",
  node: "node-1",
  parentId: undefined,
  attempt: 1,
  submittedAt: Date.now(),
  startedAt: Date.now(),
  finishedAt: Date.now(),
  startType: "warm",
  queueWaitMs: 0.01,
  initMs: undefined,
  ttfbMs: 0.2,
  execMs: 0.3,
  status: 200,
  errorCode: undefined,
  errorMessage: undefined,
  notBefore: undefined,
  idempotencyKey: undefined,
  callbackUrl: undefined,
});

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function enqueues(store: SqliteStore, total: number, inFlight: number): Promise<number> {
  const start = performance.now();
  let next = 0;
  const worker = async () => {
    while (next++ < total) await store.enqueue(newCall());
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  return total / ((performance.now() - start) / 1000);
}

async function main(): Promise<void> {
  const store = new SqliteStore(join(dir, "fennec.db"));
  const rate = (n: number) => `${Math.round(n).toLocaleString("en")}/s`;
  console.log(`store: ${store.describe}`);
  for (const inFlight of [1, 16, 64, 256]) {
    const total = inFlight === 1 ? 1_000 : 10_000;
    console.log(`accepted enqueues, ${inFlight} in flight: ${rate(await enqueues(store, total, inFlight))}`);
  }

  // Records: the caller's push, then the hand-over of the batch the timer would make (the
  // synchronous part of flush(): cloning the batch to the writer thread), both on this thread.
  // 450 records is what 50 ms holds at 9,000 sync calls/s.
  const batch = 450;
  const rounds = 400;
  const records = Array.from({ length: batch * rounds }, record);
  let pushNs = 0n;
  let handNs = 0n;
  const perRound: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < batch; i++) store.record(records[r * batch + i]!);
    const t1 = process.hrtime.bigint();
    const written = store.flush();
    const t2 = process.hrtime.bigint();
    handNs += t2 - t1;
    pushNs += t1 - t0;
    perRound.push(Number(t2 - t0) / batch / 1000);
    await written;
  }
  const n = batch * rounds;
  const us = (ns: bigint) => Number(ns) / n / 1000;
  console.log(
    `record(): ${us(pushNs).toFixed(2)} µs to push + ${us(handNs).toFixed(2)} µs to hand over = ${us(pushNs + handNs).toFixed(2)} µs per record on the caller's thread (mean); median ${median(perRound).toFixed(2)} µs, best ${Math.min(...perRound).toFixed(2)} µs of ${rounds} batches`,
  );

  // What the same batches would cost written on this thread instead (the choice the worker avoids):
  // SQLite's per-row work on a connection of its own, in the store's schema.
  const inline = new Database(join(dir, "inline.db"));
  inline.pragma("journal_mode = WAL");
  migrate(inline, "inline");
  const writer = new BehindWriter(inline);
  const inlineRounds: number[] = [];
  let inlineNs = 0n;
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint();
    const columns = new RecordBatchBuilder();
    for (const x of records.slice(r * batch, (r + 1) * batch)) columns.add({ ...x, id: randomUUID() });
    writer.write({ records: columns.take(), lines: [] });
    const ns = process.hrtime.bigint() - t0;
    inlineNs += ns;
    inlineRounds.push(Number(ns) / batch / 1000);
  }
  inline.close();
  console.log(
    `written on this thread instead: ${us(inlineNs).toFixed(2)} µs per record (mean); median ${median(inlineRounds).toFixed(2)} µs, best ${Math.min(...inlineRounds).toFixed(2)} µs`,
  );

  // The whole main-thread cost at 9,000 records/s (hand-over and the writer's replies included),
  // as event-loop utilisation over 3 s, next to the same loop of timers without records.
  for (const withRecords of [false, true]) {
    const fresh = Array.from({ length: 9_000 * 3 }, record);
    const before = performance.eventLoopUtilization();
    let at = 0;
    await new Promise<void>((resolve) => {
      const tick = setInterval(() => {
        if (withRecords) for (let i = 0; i < 45; i++) store.record(fresh[at++]!);
        else at += 45;
        if (at >= fresh.length) {
          clearInterval(tick);
          resolve();
        }
      }, 5);
    });
    await store.flush();
    const elu = performance.eventLoopUtilization(before);
    console.log(
      `9,000 records/s for 3 s ${withRecords ? "with" : "without"} records: main thread busy ${(elu.utilization * 100).toFixed(2)} % (${elu.active.toFixed(1)} of ${(elu.active + elu.idle).toFixed(1)} ms)`,
    );
  }
  await store.close();
  rmSync(dir, { recursive: true, force: true });
}

await main();
