import type { Database } from "better-sqlite3";
import { Worker } from "node:worker_threads";
import type { CallRecord, LogLine, StoredLogLine, SyncCallEnd } from "../contract.js";
import { BehindWriter, type BehindBatch } from "./behind-writer.js";
import type { FromBehindWorker, ToBehindWorker } from "./behind-worker.js";
import { RecordBatchBuilder } from "./record-batch.js";

const WORKER_URL = new URL("./behind-worker.js", import.meta.url);

export interface WriteBehindOptions {
  /**
   * A batch is handed to the writer at most this long after its first item (default 250 ms: what
   * a crash may lose, and how late `logs --follow` sees a line; every read writes what is pending
   * first). Each batch has a cost of its own however small (a transaction, a page, two messages
   * between threads): a warm echo with records on served 2–7 % more calls at 250 ms than at 50 ms
   * in two runs of four, and about as many in the other two (docs/benchmarks.md).
   */
  readonly flushMs?: number;
  /** ... or as soon as it holds this many items (default 4096: about 250 ms at 16,000 calls/s). */
  readonly maxItems?: number;
}

/** Where batches go: a thread with its own connection (a file), or this thread's (`:memory:`). */
type Sink = (batch: BehindBatch) => Promise<number[]>;

/**
 * Sync-call records and log lines, written behind. `record()` adds the record to the columns of
 * the next batch (record-batch.ts) and `logs()` pushes onto an array; every `flushMs` the batch
 * goes to a worker thread that writes it in one transaction on its own connection, with
 * `synchronous = NORMAL` (in WAL mode that commit does not fsync: the next checkpoint does), so
 * neither SQLite's per-row work nor an fsync lands on the gateway's thread. A crash may lose the
 * last records; the contract allows it. Measured in bench/records.ts and bench/store.ts.
 */
export class WriteBehind {
  readonly #sink: Sink;
  readonly #stopSink: () => Promise<void>;
  readonly #flushMs: number;
  readonly #maxItems: number;
  readonly #onWritten: (ids: readonly string[], lines: readonly StoredLogLine[]) => void;
  readonly #onError: (err: unknown, dropped: number) => void;
  #records = new RecordBatchBuilder();
  /** The ids of the records in #records, told to onWritten (whoever waits for one of them). */
  #ids: string[] = [];
  #lines: LogLine[] = [];
  /** Sync calls ended this turn of the event loop, added to #records once it has done its I/O. */
  #ended: SyncCallEnd[] = [];
  #endedImmediate: NodeJS.Immediate | undefined;
  #timer: NodeJS.Timeout | undefined;
  #immediate: NodeJS.Immediate | undefined;
  /** The batches handed to the sink and not yet written, in order. */
  #writing: Promise<void> = Promise.resolve();

  constructor(
    target: { readonly path: string } | { readonly db: Database },
    options: WriteBehindOptions,
    onWritten: (ids: readonly string[], lines: readonly StoredLogLine[]) => void,
    onError: (err: unknown, dropped: number) => void,
  ) {
    if ("db" in target) {
      const writer = new BehindWriter(target.db);
      this.#sink = (batch) => Promise.resolve().then(() => writer.write(batch));
      this.#stopSink = () => Promise.resolve();
    } else [this.#sink, this.#stopSink] = workerSink(target.path);
    this.#flushMs = options.flushMs ?? 250;
    this.#maxItems = options.maxItems ?? 4096;
    this.#onWritten = onWritten;
    this.#onError = onError;
  }

  record(record: CallRecord): void {
    this.#records.add(record);
    this.#ids.push(record.id);
    this.#schedule();
  }

  /**
   * A sync call's record, added to the batch at the end of this turn of the event loop rather than
   * now: its call's response is being written in this turn, after the microtask this runs in, and
   * it is not kept waiting for the record. One pass adds the turn's calls; a read or a flush adds
   * them first (a read still sees every record handed over before it).
   */
  recordSync(end: SyncCallEnd): void {
    this.#ended.push(end);
    this.#endedImmediate ??= setImmediate(this.#addEnded);
  }

  readonly #addEnded = (): void => {
    if (this.#endedImmediate) clearImmediate(this.#endedImmediate);
    this.#endedImmediate = undefined;
    const ended = this.#ended;
    if (ended.length === 0) return;
    this.#ended = [];
    for (const end of ended) {
      this.#records.addSync(end);
      this.#ids.push(end.id);
    }
    this.#schedule();
  };

  logs(lines: readonly LogLine[]): void {
    for (const line of lines) this.#lines.push(line);
    this.#schedule();
  }

  #schedule(): void {
    if (this.#records.size + this.#lines.length >= this.#maxItems) {
      // Not on the caller's stack: a full batch goes right after it returns.
      this.#immediate ??= setImmediate(() => void this.flush());
      return;
    }
    if (this.#timer) return;
    this.#timer = setTimeout(() => void this.flush(), this.#flushMs);
    // Pending writes alone must not keep the process up: close() writes them.
    this.#timer.unref();
  }

  /** Hands over everything pushed so far; resolves once it (and every earlier batch) is written. */
  flush(): Promise<void> {
    this.#addEnded();
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#immediate) clearImmediate(this.#immediate);
    this.#immediate = undefined;
    const ids = this.#ids;
    const lines = this.#lines;
    if (ids.length > 0 || lines.length > 0) {
      const records = this.#records.take();
      this.#ids = [];
      this.#lines = [];
      const written = this.#sink({ records, lines }).then(
        (seqs) =>
          this.#onWritten(
            ids,
            lines.map((l, i) => ({ ...l, seq: seqs[i]! })),
          ),
        (err: unknown) => this.#onError(err, ids.length + lines.length),
      );
      this.#writing = Promise.all([this.#writing, written]).then(() => undefined);
    }
    return this.#writing;
  }

  /** Writes what is pending and stops the writer. */
  async close(): Promise<void> {
    await this.flush();
    await this.#stopSink();
  }
}

/** A sink on a worker thread with its own connection to `path`. */
function workerSink(path: string): [Sink, () => Promise<void>] {
  const worker = new Worker(WORKER_URL, { workerData: { path } });
  const pending = new Map<number, { resolve: (seqs: number[]) => void; reject: (err: unknown) => void }>();
  let next = 0;
  let failure: Error | undefined;
  worker.on("message", (msg: FromBehindWorker) => {
    const p = pending.get(msg.id);
    if (!p) return;
    pending.delete(msg.id);
    if (pending.size === 0) worker.unref();
    if ("error" in msg) p.reject(Object.assign(new Error(msg.error.message), { code: msg.error.code }));
    else p.resolve(msg.seqs);
  });
  const died = (err: Error) => {
    failure = err;
    for (const p of pending.values()) p.reject(err);
    pending.clear();
  };
  worker.on("error", died);
  // Referenced only while a batch is out, so an idle store does not keep the process up. After
  // the listeners: adding a "message" listener refs the worker again.
  worker.unref();
  const exited = new Promise<void>((resolve) =>
    worker.once("exit", (code) => {
      died(new Error(`the store's writer thread exited with code ${code}`));
      resolve();
    }),
  );
  const sink: Sink = (batch) =>
    new Promise<number[]>((resolve, reject) => {
      if (failure) return reject(failure);
      const id = next++;
      pending.set(id, { resolve, reject });
      worker.ref();
      const { records, lines } = batch;
      worker.postMessage(
        { id, records, lines: lines.length === 0 ? "" : JSON.stringify(lines) } satisfies ToBehindWorker,
        [records.nums.buffer as ArrayBuffer],
      );
    });
  const stop = async () => {
    if (!failure) {
      worker.ref();
      worker.postMessage("close");
    }
    await exited;
  };
  return [sink, stop];
}
