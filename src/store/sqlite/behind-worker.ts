/**
 * The thread that writes sync-call records and log lines behind, on its own connection to the
 * store's file, so the gateway's thread pays only for handing them over (see write-behind.ts).
 * It also checkpoints the WAL into the database file, the other fsync-heavy chore.
 */
import Database from "better-sqlite3";
import { parentPort, workerData } from "node:worker_threads";
import { BehindWriter } from "./behind-writer.js";
import type { RecordBatch } from "./record-batch.js";
import type { LogLine } from "../contract.js";

export interface ToBehindWorker {
  readonly id: number;
  /** Its numbers' buffer is transferred, not copied (see record-batch.ts). */
  readonly records: RecordBatch;
  /** The log lines as JSON ("" for none): one string to copy, not an object graph to clone. */
  readonly lines: string;
}

export type FromBehindWorker =
  | { readonly id: number; readonly seqs: number[] }
  | { readonly id: number; readonly error: { readonly code: string | undefined; readonly message: string } };

/** How often the WAL is copied into the database file when nothing else triggers it. */
const CHECKPOINT_MS = 1000;

const { path } = workerData as { path: string };
// A generous busy timeout: this thread may wait for the gateway's durable writes, never the reverse.
const db = new Database(path, { timeout: 10_000 });
// All this connection writes may be lost in a machine crash (records, logs): NORMAL for good, not
// set and reset around each batch (two pragmas a batch were a good share of a small batch's cost).
// A checkpoint still syncs the WAL before it copies it, and the database file after.
db.pragma("synchronous = NORMAL");
const writer = new BehindWriter(db, { ownConnection: true });

const port = parentPort!;
port.on("message", (msg: ToBehindWorker | "close") => {
  if (msg === "close") {
    checkpoint();
    clearInterval(timer);
    db.close();
    port.close();
    return;
  }
  try {
    port.postMessage({
      id: msg.id,
      seqs: writer.write({
        records: msg.records,
        lines: msg.lines === "" ? [] : (JSON.parse(msg.lines) as LogLine[]),
      }),
    } satisfies FromBehindWorker);
  } catch (err) {
    const e = err as { code?: string; message?: string };
    port.postMessage({
      id: msg.id,
      error: { code: e.code, message: e.message ?? String(err) },
    } satisfies FromBehindWorker);
  }
});

function checkpoint(): void {
  try {
    db.pragma("wal_checkpoint(PASSIVE)");
  } catch {
    // A full disk or a busy writer: the WAL keeps the data, the next round tries again.
  }
}
const timer = setInterval(checkpoint, CHECKPOINT_MS);
timer.unref();
