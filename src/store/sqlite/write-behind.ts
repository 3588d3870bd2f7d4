import type { Database, Statement } from "better-sqlite3";
import type { CallRecord, LogLine, StoredLogLine } from "../contract.js";
import { INSERT_CALL, recordBytes, rowOf } from "./rows.js";

/**
 * Runs `fn` in a transaction whose commit does not fsync (WAL, `synchronous = NORMAL`): for what
 * may be lost in a machine crash (records, logs, retention's deletes). The connection is back at
 * FULL after it, for the durable writes.
 */
export function withoutFsync<T>(db: Database, fn: () => T): T {
  db.pragma("synchronous = NORMAL");
  try {
    return db.transaction(fn)();
  } finally {
    db.pragma("synchronous = FULL");
  }
}

export interface WriteBehindOptions {
  /** A batch is written at most this long after its first item (default 50 ms). */
  readonly flushMs?: number;
  /** ... or as soon as it holds this many items (default 2000). */
  readonly maxItems?: number;
}

/**
 * Sync-call records and log lines, written behind: `record()` and `appendLogs()` only push onto
 * an array (a call's cost on the caller's thread is that push), and a timer writes the batch in one
 * transaction. The batch is written with `synchronous = NORMAL`: in WAL mode that commit does not
 * fsync, the next durable (FULL) commit or checkpoint carries it to disk, so records never pay for
 * an fsync; a crash may lose the last ones, which the contract allows.
 */
export class WriteBehind {
  readonly #db: Database;
  readonly #insertRecord: Statement;
  readonly #insertLog: Statement;
  readonly #flushMs: number;
  readonly #maxItems: number;
  readonly #onWritten: (records: readonly CallRecord[], lines: readonly StoredLogLine[]) => void;
  readonly #onError: (err: unknown, dropped: number) => void;
  #records: CallRecord[] = [];
  #lines: LogLine[] = [];
  #timer: NodeJS.Timeout | undefined;
  #immediate: NodeJS.Immediate | undefined;

  constructor(
    db: Database,
    options: WriteBehindOptions,
    onWritten: (records: readonly CallRecord[], lines: readonly StoredLogLine[]) => void,
    onError: (err: unknown, dropped: number) => void,
  ) {
    this.#db = db;
    this.#insertRecord = db.prepare(INSERT_CALL.replace("INSERT", "INSERT OR REPLACE"));
    this.#insertLog = db.prepare(
      "INSERT INTO logs (time, function, call_id, instance_id, stream, text) VALUES (?, ?, ?, ?, ?, ?)",
    );
    this.#flushMs = options.flushMs ?? 50;
    this.#maxItems = options.maxItems ?? 2000;
    this.#onWritten = onWritten;
    this.#onError = onError;
  }

  /** The record waiting to be written, if `id`'s is (so a read never misses what was handed over). */
  pending(id: string): CallRecord | undefined {
    for (let i = this.#records.length - 1; i >= 0; i--)
      if (this.#records[i]!.id === id) return this.#records[i];
    return undefined;
  }

  record(record: CallRecord): void {
    this.#records.push(record);
    this.#schedule();
  }

  logs(lines: readonly LogLine[]): void {
    for (const line of lines) this.#lines.push(line);
    this.#schedule();
  }

  #schedule(): void {
    if (this.#records.length + this.#lines.length >= this.#maxItems) {
      // Still not on the caller's stack: a full batch is written right after it returns.
      this.#immediate ??= setImmediate(() => this.flush());
      return;
    }
    if (this.#timer) return;
    this.#timer = setTimeout(() => this.flush(), this.#flushMs);
    // Pending writes alone must not keep the process up: close() writes them.
    this.#timer.unref();
  }

  /** Writes everything handed over so far, now. */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#immediate) clearImmediate(this.#immediate);
    this.#immediate = undefined;
    const records = this.#records;
    const lines = this.#lines;
    if (records.length === 0 && lines.length === 0) return;
    this.#records = [];
    this.#lines = [];
    const stored: StoredLogLine[] = [];
    const db = this.#db;
    try {
      withoutFsync(db, () => {
        for (const r of records) this.#insertRecord.run(rowOf(r, recordBytes(r)));
        for (const l of lines) {
          const { lastInsertRowid } = this.#insertLog.run(
            l.time,
            l.function,
            l.callId ?? null,
            l.instanceId ?? null,
            l.stream,
            l.text,
          );
          stored.push({ ...l, seq: Number(lastInsertRowid) });
        }
      });
    } catch (err) {
      this.#onError(err, records.length + lines.length);
      return;
    }
    this.#onWritten(records, stored);
  }

  /** Stops the timer; what is pending is written by a last flush(). */
  stop(): void {
    clearTimeout(this.#timer);
    if (this.#immediate) clearImmediate(this.#immediate);
    this.#timer = undefined;
    this.#immediate = undefined;
  }
}
