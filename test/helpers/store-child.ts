/**
 * A process that accepts async calls into a store until it is killed: the SIGKILL test's victim.
 * Usage: node store-child.js DB_PATH. It leases two calls first (printing `running <id>`), then
 * enqueues with 16 in flight, printing `accepted <id>` as each one's enqueue resolves.
 */
import { randomUUID } from "node:crypto";
import { SqliteStore } from "../../src/store/sqlite-store.js";

const store = new SqliteStore(process.argv[2]!);
const enqueue = async () => {
  const id = randomUUID();
  await store.enqueue({
    id,
    function: "u/f",
    request: { method: "POST", path: "/", query: "", headers: {}, body: new TextEncoder().encode(id) },
    submittedAt: Date.now(),
  });
  return id;
};
for (let i = 0; i < 2; i++) await enqueue();
for (const l of await store.take({ node: "child", max: 2, leaseMs: 3_600_000, now: Date.now() }))
  process.stdout.write(`running ${l.record.id}\n`);
const worker = async () => {
  for (;;) process.stdout.write(`accepted ${await enqueue()}\n`);
};
await Promise.all(Array.from({ length: 16 }, worker));
