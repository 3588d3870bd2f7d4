import { randomUUID } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const NODE_ID = /^[0-9a-f-]{36}$/;

/**
 * The name this node leases async calls under, kept in the state directory so it outlives the
 * process: after a crash the restarted Fennec finds the calls it was running under its own name
 * and queues them again at once, instead of waiting for their leases to run out. (The scheduler's
 * `node` is per process: it tells the events of two schedulers in one process apart.)
 */
export function stableNodeId(stateDir: string): string {
  const file = join(stateDir, "node-id");
  try {
    const id = readFileSync(file, "utf8").trim();
    if (NODE_ID.test(id)) return id;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  const id = randomUUID();
  writeFileSync(file, id + "\n", { mode: 0o600 });
  return id;
}
