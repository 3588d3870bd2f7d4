import type { Database, Statement } from "better-sqlite3";
import type { CallQuery, CallRecord } from "../contract.js";
import { BatchRows, F, WIDTH, type RecordBatch } from "./record-batch.js";

/**
 * Sync-call records kept in pages (schema 6): each batch the writer thread gets is one row of
 * `record_pages`, its columns as they were handed over (record-batch.ts: the numbers' buffer as a
 * blob, the word list as JSON, the strings), instead of one `calls` row per record. A row of SQLite
 * costs 2.5–5 µs of CPU however narrow (docs/benchmarks.md, issue 12), a record in a page a few
 * tenths: that is what takes a record under 5 % of a warm call.
 *
 * What keeps them queryable: pages' id ranges never overlap (a record goes in a page only when its
 * id is above every id already in one; the others go to `calls` as rows), so the page that may hold
 * an id is the one with the greatest `first_id` not above it, and walking pages by `first_id`
 * backwards lists newest first. `record_page_functions` says which functions a page holds, so a
 * listing by function reads only those pages. Only finished sync records of no parent, key or
 * callback go in pages: every other filter (kind async, queued/running/dead, parent) skips them.
 */

/** A `record_pages` row as SQLite returns it. */
interface PageRow {
  n: number;
  first_id: string;
  last_id: string;
  words: string;
  text: string;
  nums: Buffer;
}

const COLUMNS = "n, first_id, last_id, words, text, nums";

/** The states of a record a page may hold (what retention removes by age and by bytes alike). */
const PAGEABLE_STATES = new Set(["succeeded", "failed"]);

export class RecordPages {
  readonly #newest: Statement<[], string>;
  readonly #insert: Statement;
  readonly #insertFunction: Statement;
  readonly #delete: Statement;
  readonly #deleteFunctions: Statement;
  readonly #holding: Statement<[string], PageRow>;
  readonly #page: Statement<[string], PageRow>;
  readonly #all: Statement<[], PageRow>;
  readonly #byFunction: Statement<[string], PageRow>;
  readonly #older: Statement<[number, number], string>;
  readonly #oldest: Statement<[], { first_id: string; oldest: number; bytes: number; n: number }>;

  constructor(db: Database) {
    this.#newest = db
      .prepare<[], string>("SELECT last_id FROM record_pages ORDER BY first_id DESC LIMIT 1")
      .pluck();
    this.#insert = db.prepare(
      `INSERT INTO record_pages (first_id, last_id, n, oldest, bytes, words, text, nums)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    this.#insertFunction = db.prepare("INSERT INTO record_page_functions (function, first_id) VALUES (?, ?)");
    this.#delete = db.prepare("DELETE FROM record_pages WHERE first_id = ?");
    this.#deleteFunctions = db.prepare("DELETE FROM record_page_functions WHERE first_id = ?");
    this.#holding = db.prepare(
      `SELECT ${COLUMNS} FROM record_pages WHERE first_id <= ? ORDER BY first_id DESC LIMIT 1`,
    );
    this.#page = db.prepare(`SELECT ${COLUMNS} FROM record_pages WHERE first_id = ?`);
    this.#all = db.prepare(`SELECT ${COLUMNS} FROM record_pages ORDER BY first_id DESC`);
    this.#byFunction = db.prepare(
      `SELECT ${COLUMNS.replace(/(\w+)/g, "p.$1")} FROM record_page_functions f
        JOIN record_pages p ON p.first_id = f.first_id WHERE f.function = ? ORDER BY f.first_id DESC`,
    );
    this.#older = db
      .prepare<[number, number], string>("SELECT first_id FROM record_pages WHERE oldest < ? LIMIT ?")
      .pluck();
    this.#oldest = db.prepare("SELECT first_id, oldest, bytes, n FROM record_pages ORDER BY oldest LIMIT 1");
  }

  // --- the writer's side ---

  /**
   * Writes what of `batch` may go in a page as one page; returns the rows that may not (to be
   * written to `calls`): records of another kind or state, and those whose id is not above every
   * id already in a page (a call that ran across the previous batch's hand-over, or a record
   * handed over again). Runs inside the writer's transaction, so `newest` is this file's.
   */
  write(batch: RecordBatch): number[] {
    const rows = new BatchRows(batch);
    const newest = this.#newest.get();
    const { words } = batch;
    const sync = words.indexOf("sync");
    const succeeded = words.indexOf("succeeded");
    const failed = words.indexOf("failed");
    const a = batch.nums;
    const paged: number[] = [];
    const others: number[] = [];
    let first = "";
    let last = "";
    for (let i = 0; i < batch.n; i++) {
      const o = i * WIDTH;
      const state = a[o + F.state];
      let ok =
        a[o + F.kind] === sync &&
        (state === succeeded || state === failed) &&
        a[o + F.parentId]! < 0 &&
        a[o + F.idempotencyKey]! < 0 &&
        a[o + F.callbackUrl]! < 0;
      if (ok) {
        const id = rows.id(i);
        ok = newest === undefined || id > newest;
        if (ok && (paged.length === 0 || id < first)) first = id;
        if (ok && id > last) last = id;
      }
      (ok ? paged : others).push(i);
    }
    if (paged.length === batch.n) this.#insertPage(rows, first, last);
    else if (paged.length > 0) this.#insertPage(new BatchRows(rows.subset(paged)), first, last);
    return others;
  }

  #insertPage(rows: BatchRows, first: string, last: string): void {
    const { n, nums, words, text } = rows.batch;
    let oldest = Infinity;
    let bytes = 0;
    const functions = new Set<number>();
    for (let i = 0; i < n; i++) {
      const finished = rows.num(i, F.finishedAt);
      const at = finished === finished ? finished : rows.num(i, F.submittedAt);
      if (at < oldest) oldest = at;
      bytes += rows.bytes(i);
      functions.add(rows.num(i, F.function));
    }
    const packed = packColumns(nums, n);
    const blob = Buffer.from(packed.buffer, packed.byteOffset, packed.byteLength);
    this.#insert.run(first, last, n, oldest, bytes, JSON.stringify(words), text, blob);
    for (const f of functions) this.#insertFunction.run(words[f], first);
  }

  // --- reads ---

  /** The record `id` when a page holds it (the last handed over, when it was handed over twice). */
  find(id: string): CallRecord | undefined {
    const row = this.#holding.get(id);
    if (row === undefined || row.last_id < id) return undefined;
    const rows = rowsOf(row);
    for (let i = rows.n - 1; i >= 0; i--) if (rows.id(i) === id) return rows.record(i);
    return undefined;
  }

  /**
   * The records `query` matches, newest pages first, at least `limit` of them when there are as
   * many (more from the last page read): pages' ids do not overlap, so no later page holds a newer
   * one. Keyed by id (a record handed over twice in one page: the later).
   */
  list(query: CallQuery, limit: number): Map<string, CallRecord> {
    const out = new Map<string, CallRecord>();
    if (query.kind === "async" || query.parentId !== undefined) return out;
    if (query.state !== undefined && !PAGEABLE_STATES.has(query.state)) return out;
    const pages =
      query.function === undefined ? this.#all.iterate() : this.#byFunction.iterate(query.function);
    for (const page of pages) {
      const rows = rowsOf(page);
      for (let i = 0; i < rows.n; i++) if (matches(rows, i, query)) out.set(rows.id(i), rows.record(i));
      if (out.size >= limit) break;
    }
    return out;
  }

  // --- removal ---

  /** Removes the record `id` from its page (the page is written again without it). */
  remove(id: string): boolean {
    const row = this.#holding.get(id);
    if (row === undefined || row.last_id < id) return false;
    const rows = rowsOf(row);
    const keep: number[] = [];
    for (let i = 0; i < rows.n; i++) if (rows.id(i) !== id) keep.push(i);
    if (keep.length === rows.n) return false;
    this.#replace(row.first_id, rows, keep);
    return true;
  }

  /** Up to `limit` pages holding a record that ended before `cutoff`. */
  olderThan(cutoff: number, limit: number): string[] {
    return this.#older.all(cutoff, limit);
  }

  /** Removes the records of page `firstId` that ended before `cutoff`; how many. */
  removeOlder(firstId: string, cutoff: number): number {
    const row = this.#page.get(firstId);
    if (row === undefined) return 0;
    const rows = rowsOf(row);
    const keep: number[] = [];
    for (let i = 0; i < rows.n; i++) {
      const finished = rows.num(i, F.finishedAt);
      if ((finished === finished ? finished : rows.num(i, F.submittedAt)) >= cutoff) keep.push(i);
    }
    if (keep.length < rows.n) this.#replace(firstId, rows, keep);
    return rows.n - keep.length;
  }

  /** The page whose oldest record ended first (retention by bytes removes it whole). */
  oldest(): { first_id: string; oldest: number; bytes: number; n: number } | undefined {
    return this.#oldest.get();
  }

  drop(firstId: string): void {
    this.#delete.run(firstId);
    this.#deleteFunctions.run(firstId);
  }

  #replace(firstId: string, rows: BatchRows, keep: readonly number[]): void {
    this.drop(firstId);
    if (keep.length === 0) return;
    const ids = keep.map((i) => rows.id(i)).sort();
    this.#insertPage(new BatchRows(rows.subset(keep)), ids[0]!, ids[ids.length - 1]!);
  }
}

/**
 * A page's numbers column by column, a column whose rows are all alike (attempt, node, start type,
 * status, the NaNs of what sync calls leave unset, ...) once: WIDTH values (each column's value if
 * alike), WIDTH flags (1: the column varies), then each varying column's `n` values. Half the
 * bytes of the rows as handed over, and what a page costs is mostly its bytes (SQLite's overflow
 * pages, and their WAL frames at commit).
 */
export function packColumns(rows: Float64Array, n: number): Float64Array {
  const alike = (x: number, y: number) => x === y || (x !== x && y !== y);
  const varies = new Uint8Array(WIDTH);
  let varying = 0;
  for (let f = 0; f < WIDTH; f++) {
    const first = rows[f]!;
    for (let i = 1; i < n; i++)
      if (!alike(rows[i * WIDTH + f]!, first)) {
        varies[f] = 1;
        varying++;
        break;
      }
  }
  const out = new Float64Array(2 * WIDTH + varying * n);
  let at = 2 * WIDTH;
  for (let f = 0; f < WIDTH; f++) {
    out[f] = rows[f]!;
    out[WIDTH + f] = varies[f]!;
    if (varies[f]) for (let i = 0; i < n; i++) out[at++] = rows[i * WIDTH + f]!;
  }
  return out;
}

export function unpackColumns(packed: Float64Array, n: number): Float64Array {
  const rows = new Float64Array(n * WIDTH);
  let at = 2 * WIDTH;
  for (let f = 0; f < WIDTH; f++) {
    if (packed[WIDTH + f]) for (let i = 0; i < n; i++) rows[i * WIDTH + f] = packed[at++]!;
    else for (let i = 0; i < n; i++) rows[i * WIDTH + f] = packed[f]!;
  }
  return rows;
}

function rowsOf(row: PageRow): BatchRows {
  // A copy: SQLite's blob need not be aligned for a Float64Array.
  const bytes = new Uint8Array(row.nums.byteLength);
  bytes.set(row.nums);
  return new BatchRows({
    n: row.n,
    nums: unpackColumns(new Float64Array(bytes.buffer), row.n),
    words: JSON.parse(row.words) as string[],
    text: row.text,
  });
}

function matches(rows: BatchRows, i: number, q: CallQuery): boolean {
  if (q.function !== undefined && rows.word(i, F.function) !== q.function) return false;
  if (q.state !== undefined && rows.word(i, F.state) !== q.state) return false;
  if (typeof q.status === "number" && rows.num(i, F.status) !== q.status) return false;
  if (typeof q.status === "string" && rows.word(i, F.errorCode) !== q.status) return false;
  if (q.since !== undefined && !(rows.num(i, F.submittedAt) >= q.since)) return false;
  return true;
}
