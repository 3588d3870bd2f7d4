import type { CallRecord, SyncCallEnd } from "../contract.js";

/**
 * Records handed to the writer thread as columns instead of objects: per record, one row of
 * WIDTH numbers in a Float64Array that is transferred (not copied) to the thread; the strings that
 * repeat (function, kind, state, node, start type, error code) as indexes into a small per-batch
 * word list; the strings that do not (id, parent, error message, idempotency key, callback URL)
 * appended to one string, their lengths in the row. Adding a record allocates nothing but the
 * string append, and nothing per record is serialised or cloned: JSON of record objects cost the
 * gateway's thread most of a record's price (bench/records.ts, docs/benchmarks.md).
 */
export interface RecordBatch {
  /** How many records. */
  readonly n: number;
  /** `n` rows of WIDTH numbers: NaN for a number left undefined, -1 for a string left undefined. */
  readonly nums: Float64Array;
  /** The repeated strings the rows point into. */
  readonly words: readonly string[];
  /** The other strings, back to back, in the rows' order (see TEXT). */
  readonly text: string;
}

/** A row's numbers, then its word indexes, then its text lengths. */
const NUMBER_FIELDS = 10;
/** Where a row keeps what record pages (record-pages.ts) look at. */
export const F = {
  submittedAt: 1,
  finishedAt: 3,
  status: 8,
  function: 10,
  kind: 11,
  state: 12,
  errorCode: 15,
  id: 16,
  parentId: 17,
  errorMessage: 18,
  idempotencyKey: 19,
  callbackUrl: 20,
} as const;
const WORD_FIELDS = 6;
const TEXT_FIELDS = 5;
/** Schema 4's two words (a forwarded call's via and placement), after the rest so no index moves. */
const CLUSTER_WORDS = 2;
export const WIDTH = NUMBER_FIELDS + WORD_FIELDS + TEXT_FIELDS + CLUSTER_WORDS;
const FIRST_ROWS = 256;

/** Collects records into the next RecordBatch. */
export class RecordBatchBuilder {
  #nums = new Float64Array(FIRST_ROWS * WIDTH);
  #n = 0;
  #words: string[] = [];
  #index = new Map<string, number>();
  #text = "";

  get size(): number {
    return this.#n;
  }

  add(r: CallRecord): void {
    const o = this.#row();
    const a = this.#nums;
    // The order decodeRecords reads them in.
    a[o] = r.attempt;
    a[o + 1] = r.submittedAt;
    a[o + 2] = r.startedAt ?? NaN;
    a[o + 3] = r.finishedAt ?? NaN;
    a[o + 4] = r.queueWaitMs ?? NaN;
    a[o + 5] = r.initMs ?? NaN;
    a[o + 6] = r.ttfbMs ?? NaN;
    a[o + 7] = r.execMs ?? NaN;
    a[o + 8] = r.status ?? NaN;
    a[o + 9] = r.notBefore ?? NaN;
    a[o + 10] = this.#word(r.function);
    a[o + 11] = this.#word(r.kind);
    a[o + 12] = this.#word(r.state);
    a[o + 13] = this.#word(r.node);
    a[o + 14] = this.#word(r.startType);
    a[o + 15] = this.#word(r.errorCode);
    a[o + 16] = this.#append(r.id);
    a[o + 17] = this.#append(r.parentId);
    a[o + 18] = this.#append(r.errorMessage);
    a[o + 19] = this.#append(r.idempotencyKey);
    a[o + 20] = this.#append(r.callbackUrl);
    a[o + 21] = this.#word(r.via);
    a[o + 22] = this.#word(r.placement);
  }

  /** The row `add(syncCallRecord(end))` makes (new-call.ts), read straight from the call's end. */
  addSync(end: SyncCallEnd): void {
    const r = end.figures;
    const failed = r.errorCode !== undefined;
    const ran = r.startType !== undefined;
    const answered = r.status !== 0;
    const o = this.#row();
    const a = this.#nums;
    a[o] = 1;
    a[o + 1] = end.submittedAt;
    a[o + 2] = ran ? Math.round(end.submittedAt + r.queueWaitMs + r.initMs) : NaN;
    a[o + 3] = end.finishedAt;
    a[o + 4] = r.queueWaitMs;
    a[o + 5] = r.initMs;
    a[o + 6] = answered ? r.ttfbMs : NaN;
    a[o + 7] = ran ? r.execMs : NaN;
    a[o + 8] = answered ? r.status : NaN;
    a[o + 9] = NaN;
    a[o + 10] = this.#word(r.function);
    a[o + 11] = this.#word("sync");
    a[o + 12] = this.#word(failed ? "failed" : "succeeded");
    a[o + 13] = this.#word(end.node);
    a[o + 14] = this.#word(r.startType);
    a[o + 15] = this.#word(r.errorCode);
    a[o + 16] = this.#append(end.id);
    a[o + 17] = -1;
    a[o + 18] = failed ? this.#append(end.errorMessage ?? r.errorMessage) : -1;
    a[o + 19] = -1;
    a[o + 20] = -1;
    a[o + 21] = this.#word(end.via);
    a[o + 22] = end.placement ? this.#word(end.placement) : -1;
  }

  /** Where the next row starts (the numbers grown first when full). */
  #row(): number {
    if ((this.#n + 1) * WIDTH > this.#nums.length) {
      const bigger = new Float64Array(this.#nums.length * 2);
      bigger.set(this.#nums);
      this.#nums = bigger;
    }
    return this.#n++ * WIDTH;
  }

  #word(s: string | undefined): number {
    if (s === undefined) return -1;
    let i = this.#index.get(s);
    if (i === undefined) {
      i = this.#words.length;
      this.#words.push(s);
      this.#index.set(s, i);
    }
    return i;
  }

  #append(s: string | undefined): number {
    if (s === undefined) return -1;
    this.#text += s;
    return s.length;
  }

  /** The batch so far; the builder starts the next one (sized for one like it). */
  take(): RecordBatch {
    const batch: RecordBatch = { n: this.#n, nums: this.#nums, words: this.#words, text: this.#text };
    let rows = FIRST_ROWS;
    while (rows < this.#n) rows *= 2;
    this.#nums = new Float64Array(rows * WIDTH);
    this.#n = 0;
    this.#words = [];
    this.#index = new Map();
    this.#text = "";
    return batch;
  }
}

const nullIfNaN = (x: number): number | null => (x !== x ? null : x);

/**
 * Calls `row` with each record's values in the order of INSERT_CALL (the same array every time,
 * refilled: the caller binds it before the next).
 */
export function decodeRecords(batch: RecordBatch, row: (values: unknown[]) => void): void {
  const { n, nums: a, words, text } = batch;
  const v: unknown[] = new Array(24);
  const word = (i: number): string | null => (i < 0 ? null : words[i]!);
  let at = 0;
  const next = (len: number): string | null => {
    if (len < 0) return null;
    const s = text.slice(at, at + len);
    at += len;
    return s;
  };
  for (let i = 0; i < n; i++) {
    const o = i * WIDTH;
    const id = next(a[o + 16]!)!;
    const fn = word(a[o + 10]!)!;
    const parentId = next(a[o + 17]!);
    const errorMessage = next(a[o + 18]!);
    const idempotencyKey = next(a[o + 19]!);
    const callbackUrl = next(a[o + 20]!);
    v[0] = id;
    v[1] = fn;
    v[2] = word(a[o + 11]!);
    v[3] = word(a[o + 12]!);
    v[4] = word(a[o + 13]!);
    v[5] = parentId;
    v[6] = a[o]!;
    v[7] = a[o + 1]!;
    v[8] = nullIfNaN(a[o + 2]!);
    v[9] = nullIfNaN(a[o + 3]!);
    v[10] = word(a[o + 14]!);
    v[11] = nullIfNaN(a[o + 4]!);
    v[12] = nullIfNaN(a[o + 5]!);
    v[13] = nullIfNaN(a[o + 6]!);
    v[14] = nullIfNaN(a[o + 7]!);
    v[15] = nullIfNaN(a[o + 8]!);
    v[16] = word(a[o + 15]!);
    v[17] = errorMessage;
    v[18] = nullIfNaN(a[o + 9]!);
    v[19] = idempotencyKey;
    v[20] = callbackUrl;
    // recordBytes (new-call.ts), from what is at hand.
    v[21] =
      id.length +
      fn.length +
      (errorMessage?.length ?? 0) +
      (callbackUrl?.length ?? 0) +
      (idempotencyKey?.length ?? 0);
    v[22] = word(a[o + 21]!);
    v[23] = word(a[o + 22]!);
    row(v);
  }
}

const opt = (x: number): number | undefined => (x !== x ? undefined : x);

/**
 * A batch's records read by row (record pages keep batches as they were handed over): where each
 * row's strings start in `text` is found in one pass.
 */
export class BatchRows {
  readonly batch: RecordBatch;
  readonly #at: Float64Array;

  constructor(batch: RecordBatch) {
    this.batch = batch;
    const { n, nums: a } = batch;
    const at = new Float64Array(n);
    let pos = 0;
    for (let i = 0; i < n; i++) {
      at[i] = pos;
      const o = i * WIDTH;
      for (let f = F.id; f <= F.callbackUrl; f++) if (a[o + f]! > 0) pos += a[o + f]!;
    }
    this.#at = at;
  }

  get n(): number {
    return this.batch.n;
  }

  num(i: number, field: number): number {
    return this.batch.nums[i * WIDTH + field]!;
  }

  word(i: number, field: number): string | undefined {
    const w = this.batch.nums[i * WIDTH + field]!;
    return w < 0 ? undefined : this.batch.words[w];
  }

  /** One of the row's strings (F.id … F.callbackUrl). */
  text(i: number, field: number): string | undefined {
    const a = this.batch.nums;
    const o = i * WIDTH;
    if (a[o + field]! < 0) return undefined;
    let start = this.#at[i]!;
    for (let f = F.id; f < field; f++) if (a[o + f]! > 0) start += a[o + f]!;
    return this.batch.text.slice(start, start + a[o + field]!);
  }

  id(i: number): string {
    const start = this.#at[i]!;
    return this.batch.text.slice(start, start + this.batch.nums[i * WIDTH + F.id]!);
  }

  /** What retention counts for the row (recordBytes in new-call.ts). */
  bytes(i: number): number {
    const a = this.batch.nums;
    const o = i * WIDTH;
    const len = (f: number) => Math.max(a[o + f]!, 0);
    return (
      a[o + F.id]! +
      len(F.errorMessage) +
      len(F.idempotencyKey) +
      len(F.callbackUrl) +
      this.batch.words[a[o + F.function]!]!.length
    );
  }

  /** The row as the record handed over (as rows.ts recordOf reads a `calls` row). */
  record(i: number): CallRecord {
    const a = this.batch.nums;
    const o = i * WIDTH;
    const via = this.word(i, 21);
    const placement = this.word(i, 22);
    return {
      id: this.id(i),
      function: this.word(i, F.function)!,
      kind: this.word(i, F.kind) as CallRecord["kind"],
      state: this.word(i, F.state) as CallRecord["state"],
      node: this.word(i, 13),
      parentId: this.text(i, F.parentId),
      attempt: a[o]!,
      submittedAt: a[o + 1]!,
      startedAt: opt(a[o + 2]!),
      finishedAt: opt(a[o + 3]!),
      startType: this.word(i, 14),
      queueWaitMs: opt(a[o + 4]!),
      initMs: opt(a[o + 5]!),
      ttfbMs: opt(a[o + 6]!),
      execMs: opt(a[o + 7]!),
      status: opt(a[o + 8]!),
      errorCode: this.word(i, F.errorCode),
      errorMessage: this.text(i, F.errorMessage),
      notBefore: opt(a[o + 9]!),
      idempotencyKey: this.text(i, F.idempotencyKey),
      callbackUrl: this.text(i, F.callbackUrl),
      ...(via === undefined ? {} : { via }),
      ...(placement === undefined ? {} : { placement }),
    };
  }

  /** A batch of some of these rows, in the order given (the same words). */
  subset(rows: readonly number[]): RecordBatch {
    const nums = new Float64Array(rows.length * WIDTH);
    let text = "";
    rows.forEach((i, k) => {
      nums.set(this.batch.nums.subarray(i * WIDTH, (i + 1) * WIDTH), k * WIDTH);
      for (let f = F.id; f <= F.callbackUrl; f++) text += this.text(i, f) ?? "";
    });
    return { n: rows.length, nums, words: this.batch.words, text };
  }
}
