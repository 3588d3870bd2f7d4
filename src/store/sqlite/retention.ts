import type { Database } from "better-sqlite3";
import type { PruneResult, RetentionPolicy } from "../contract.js";
import { withoutFsync } from "./behind-writer.js";
import { whenFree } from "./busy.js";
import { RecordPages } from "./record-pages.js";

/** Rows removed per transaction: the event loop gets a turn between chunks, so calls keep flowing. */
const CALL_CHUNK = 500;
/** Record pages per transaction (each up to 4,096 records: see write-behind.ts). */
const PAGE_CHUNK = 2;
const LOG_CHUNK = 2000;

/** Finished calls retention may remove: never queued or running; dead letters only by age. */
const BY_AGE = `state IN ('succeeded', 'failed', 'dead') AND coalesce(finished_at, submitted_at) < ?`;
const BY_BYTES = `state IN ('succeeded', 'failed')`;

/** The bytes retention counts: bodies, headers and strings of calls, log text, state values. */
export function storedBytes(db: Database): number {
  return db
    .prepare<[], number>(
      `SELECT (SELECT coalesce(sum(bytes), 0) FROM calls)
        + (SELECT coalesce(sum(bytes), 0) FROM record_pages)
        + (SELECT coalesce(sum(length(CAST(text AS BLOB))), 0) FROM logs)
        + (SELECT coalesce(sum(length(value) + length(key)), 0) FROM state)
        + (SELECT coalesce(sum(length(value) + length(key)), 0) FROM state_appended)`,
    )
    .pluck()
    .get()!;
}

const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * Removes finished calls (with their request, response) and log lines older than `maxAgeMs`,
 * then the oldest finished calls and log lines, whichever is older first, until what the store
 * keeps is under `maxBytes`. Dead letters wait for their age or an explicit delete, and queued or
 * running calls and state are never removed: when they alone are over `maxBytes`, so be it.
 * Freed pages go back to the file system (incremental vacuum).
 */
export async function prune(
  db: Database,
  policy: RetentionPolicy,
  now: number,
  closed: () => boolean,
): Promise<PruneResult> {
  const cutoff = now - policy.maxAgeMs;
  const oldCalls = db
    .prepare<[number, number], string>(`SELECT id FROM calls WHERE ${BY_AGE} LIMIT ?`)
    .pluck();
  const oldestCalls = db.prepare<[number], { id: string; at: number; bytes: number }>(
    `SELECT id, coalesce(finished_at, submitted_at) AS at, bytes FROM calls WHERE ${BY_BYTES}
        ORDER BY coalesce(finished_at, submitted_at) LIMIT ?`,
  );
  const firstLogs = db.prepare<[number], { seq: number; time: number; bytes: number }>(
    "SELECT seq, time, length(CAST(text AS BLOB)) AS bytes FROM logs ORDER BY seq LIMIT ?",
  );
  const deleteCall = db.prepare("DELETE FROM calls WHERE id = ?");
  const deleteRequest = db.prepare("DELETE FROM requests WHERE call_id = ?");
  const deleteResponse = db.prepare("DELETE FROM responses WHERE call_id = ?");
  const oldLogs = db.prepare<[number, number]>(
    "DELETE FROM logs WHERE seq IN (SELECT seq FROM logs WHERE time < ? ORDER BY seq LIMIT ?)",
  );
  const logsUpTo = db.prepare<[number]>("DELETE FROM logs WHERE seq <= ?");
  const pages = new RecordPages(db);
  const removeCalls = (ids: readonly string[]) =>
    whenFree(() =>
      withoutFsync(db, () => {
        for (const id of ids) {
          deleteCall.run(id);
          deleteRequest.run(id);
          deleteResponse.run(id);
        }
      }),
    );

  let calls = 0;
  let logLines = 0;
  // 1. By age.
  for (;;) {
    const ids = oldCalls.all(cutoff, CALL_CHUNK);
    if (ids.length === 0) break;
    await removeCalls(ids);
    calls += ids.length;
    await turn();
    if (closed()) return { calls, logLines };
  }
  // Record pages (schema 6): those holding a record that ended before the cutoff are written again
  // without it (or go, when nothing is left).
  for (;;) {
    const firstIds = pages.olderThan(cutoff, PAGE_CHUNK);
    if (firstIds.length === 0) break;
    calls += await whenFree(() =>
      withoutFsync(db, () => firstIds.reduce((n, id) => n + pages.removeOlder(id, cutoff), 0)),
    );
    await turn();
    if (closed()) return { calls, logLines };
  }
  for (;;) {
    const n = await whenFree(() => withoutFsync(db, () => oldLogs.run(cutoff, LOG_CHUNK).changes));
    logLines += n;
    if (n < LOG_CHUNK) break;
    await turn();
    if (closed()) return { calls, logLines };
  }
  // 2. By bytes: finished calls, record pages and log lines, whichever is older first, only as
  // many as it takes. A page goes whole (its records ended within one hand-over of each other).
  let used = storedBytes(db);
  while (used > policy.maxBytes) {
    const chunk = oldestCalls.all(CALL_CHUNK);
    const lines = firstLogs.all(LOG_CHUNK);
    const page = pages.oldest();
    if (chunk.length === 0 && lines.length === 0 && page === undefined) break;
    const nextLog = lines[0]?.time ?? Infinity;
    const nextPage = page?.oldest ?? Infinity;
    if (page !== undefined && nextPage <= (chunk[0]?.at ?? Infinity) && nextPage <= nextLog) {
      await whenFree(() => withoutFsync(db, () => pages.drop(page.first_id)));
      used -= page.bytes;
      calls += page.n;
    } else if (chunk.length > 0 && chunk[0]!.at <= nextLog) {
      const ids: string[] = [];
      for (const c of chunk) {
        if (used <= policy.maxBytes || c.at > Math.min(nextLog, nextPage)) break;
        ids.push(c.id);
        used -= c.bytes;
      }
      await removeCalls(ids);
      calls += ids.length;
    } else {
      const nextCall = Math.min(chunk[0]?.at ?? Infinity, nextPage);
      let last = -1;
      let n = 0;
      for (const l of lines) {
        if (used <= policy.maxBytes || l.time > nextCall) break;
        last = l.seq;
        used -= l.bytes;
        n++;
      }
      await whenFree(() => withoutFsync(db, () => logsUpTo.run(last)));
      logLines += n;
    }
    await turn();
    if (closed()) return { calls, logLines };
  }
  if (calls + logLines > 0) await whenFree(() => db.pragma("incremental_vacuum"));
  return { calls, logLines };
}
