import type { Database, Statement } from "better-sqlite3";
import type { LogLine } from "../contract.js";
import { BatchRows, decodeRecords, type RecordBatch } from "./record-batch.js";
import { RecordPages } from "./record-pages.js";
import { INSERT_CALL } from "./rows.js";

/**
 * Runs `fn` in a transaction whose commit does not fsync (WAL, `synchronous = NORMAL`): for what
 * may be lost in a machine crash (records, logs, retention's deletes). The connection is back at
 * FULL after it, for the durable writes.
 */
export function withoutFsync<T>(db: Database, fn: () => T): T {
  db.pragma("synchronous = NORMAL");
  try {
    // IMMEDIATE: what reads before it writes (record pages: the newest page; retention: a page to
    // write again) must not find, at its first write, that another connection wrote since.
    return db.transaction(fn).immediate();
  } finally {
    db.pragma("synchronous = FULL");
  }
}

/** One batch of what is written behind. */
export interface BehindBatch {
  readonly records: RecordBatch;
  readonly lines: readonly LogLine[];
}

/** Writes batches of records and log lines in one transaction each; returns the lines' seqs. */
export class BehindWriter {
  readonly #db: Database;
  readonly #insertRecord: Statement;
  readonly #insertLog: Statement;
  readonly #pages: RecordPages;
  /** A connection of its own, at `synchronous = NORMAL` for good (the writer thread's). */
  readonly #own: boolean;

  constructor(db: Database, options: { readonly ownConnection?: boolean } = {}) {
    this.#db = db;
    this.#own = options.ownConnection ?? false;
    this.#pages = new RecordPages(db);
    this.#insertRecord = db.prepare(INSERT_CALL.replace("INSERT", "INSERT OR REPLACE"));
    this.#insertLog = db.prepare(
      "INSERT INTO logs (time, function, call_id, instance_id, stream, text) VALUES (?, ?, ?, ?, ?, ?)",
    );
  }

  write(batch: BehindBatch): number[] {
    const run = (fn: () => number[]) =>
      this.#own ? this.#db.transaction(fn).immediate() : withoutFsync(this.#db, fn);
    return run(() => {
      // Most go in one page; the rest (see RecordPages.write) as rows.
      const rows = batch.records.n === 0 ? [] : this.#pages.write(batch.records);
      if (rows.length > 0)
        decodeRecords(new BatchRows(batch.records).subset(rows), (values) => this.#insertRecord.run(values));
      return batch.lines.map(
        (l) =>
          this.#insertLog.run(l.time, l.function, l.callId ?? null, l.instanceId ?? null, l.stream, l.text)
            .lastInsertRowid as number,
      );
    });
  }
}
