import type { CallRecord } from "../contract.js";

/** Records are written behind: at most this long after they are handed over, or at this many. */
const RECORDS_MS = 20;
const RECORDS_MAX = 500;

/**
 * Sync calls' records handed over and not yet written (reads see them here), written in batches
 * by `write` (which publishes them pipelined), one batch after the other.
 */
export class RecordsBehind {
  readonly #pending = new Map<string, CallRecord>();
  /** Of those, the ones no batch has taken yet. */
  #unwritten: CallRecord[] = [];
  #timer: NodeJS.Timeout | undefined;
  #writing: Promise<void> = Promise.resolve();

  constructor(private readonly write: (batch: readonly CallRecord[]) => Promise<void>) {}

  add(record: CallRecord): void {
    this.#pending.set(record.id, record);
    this.#unwritten.push(record);
    if (this.#unwritten.length >= RECORDS_MAX) void this.flush();
    else this.#timer ??= setTimeout(() => void this.flush(), RECORDS_MS);
  }

  get(id: string): CallRecord | undefined {
    return this.#pending.get(id);
  }

  has(id: string): boolean {
    return this.#pending.has(id);
  }

  values(): IterableIterator<CallRecord> {
    return this.#pending.values();
  }

  /** Writes what is unwritten; resolves when it (and every earlier batch) is done. */
  flush(): Promise<void> {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    const batch = this.#unwritten;
    this.#unwritten = [];
    if (batch.length === 0) return this.#writing;
    this.#writing = this.#writing.then(async () => {
      try {
        await this.write(batch);
      } finally {
        for (const r of batch) if (this.#pending.get(r.id) === r) this.#pending.delete(r.id);
      }
    });
    return this.#writing;
  }
}
