/**
 * A process that accepts async calls into a store until it is killed: the SIGKILL test's victim.
 * Usage: node store-child.js DB_PATH [once]. It leases two calls first (printing `running <id>`), then
 * enqueues with 16 in flight, printing `accepted <id>` as each one's enqueue resolves. With
 * `once` it stops after the leases, leaving the store open: the process must still end by itself.
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
// `once`: no record or log line was ever handed to the writer thread, which must not hold the process.
if (process.argv[3] !== "once") await accept();

async function accept(): Promise<void> {
  const worker = async () => {
    for (;;) process.stdout.write(`accepted ${await enqueue()}\n`);
  };
  await Promise.all(Array.from({ length: 16 }, worker));
}
