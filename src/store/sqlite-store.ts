import Database from "better-sqlite3";
import type { Statement } from "better-sqlite3";
import { FennecError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { CallWaiters } from "./call-waiters.js";
import { CLEARED_FIGURES, queuedRecord, recordBytes } from "./new-call.js";
import {
  TERMINAL_STATES,
  type CallQuery,
  type CallRecord,
  type InvocationStore,
  type LeasedCall,
  type LogLine,
  type LogQuery,
  type NewAsyncCall,
  type PruneResult,
  type QueueFigures,
  type RetentionPolicy,
  type StoredLogLine,
  type StoredResponse,
  type SyncCallEnd,
} from "./contract.js";
import { LogFollowers } from "./log-followers.js";
import { storeError } from "./sqlite/errors.js";
import { GroupCommit, type TxContext } from "./sqlite/group-commit.js";
import { RecordPages } from "./sqlite/record-pages.js";
import { prune } from "./sqlite/retention.js";
import {
  INSERT_CALL,
  blob,
  figureColumns,
  recordOf,
  requestOf,
  responseOf,
  rowOf,
  type CallRow,
  type RequestRow,
  type ResponseRow,
} from "./sqlite/rows.js";
import { whenFree } from "./sqlite/busy.js";
import { migrate } from "./sqlite/schema.js";
import { StateOps } from "./sqlite/state-ops.js";
import { WriteBehind, type WriteBehindOptions } from "./sqlite/write-behind.js";

export interface SqliteStoreOptions extends WriteBehindOptions {
  /** Where write-behind failures are told (records and log lines are dropped then). */
  readonly log?: Logger;
}

const headersBytes = (h: object): string => JSON.stringify(h);

/** Ending a call with a callback URL starts its delivery, in the same write (see CallbackState). */
const pendingIfCallback = (row: CallRow): string | null => (row.callback_url === null ? null : "pending");

/**
 * The embedded invocation store: one SQLite file in WAL mode, written from the calling thread.
 * Durable writes (enqueue, leases, results, state) are group-committed with `synchronous = FULL`;
 * sync-call records and log lines are written behind (see WriteBehind). The connection holds the
 * file exclusively (`locking_mode = EXCLUSIVE`): a second Fennec on the same state directory is
 * refused at start instead of taking the first one's calls.
 */
export class SqliteStore implements InvocationStore {
  readonly describe: string;
  readonly #db: Database.Database;
  readonly #group: GroupCommit;
  readonly #behind: WriteBehind;
  readonly #state: StateOps;
  readonly #waiters = new CallWaiters();
  readonly #followers = new LogFollowers();
  readonly #log: Logger | undefined;
  readonly #sql: ReturnType<typeof statements>;
  /** Sync records written in pages (schema 6); the others are `calls` rows. */
  readonly #pages: RecordPages;
  /** Held while open (see ownerLock). */
  readonly #owner: Database.Database | undefined;
  /**
   * Whether this process alone has the file open: then every call marked running at open is an
   * orphan of a process that died (see requeueOrphans). False in memory (nothing survives) and
   * when another live Fennec shares the file.
   */
  readonly soleOwner: boolean;
  #closed = false;

  /** Opens (creating) the database at `path`, or `:memory:`. Throws STORE_CORRUPT / STORE_UNAVAILABLE. */
  constructor(path: string, options: SqliteStoreOptions = {}) {
    this.describe = `sqlite:${path}`;
    this.#log = options.log;
    const memory = path === ":memory:";
    let db: Database.Database | undefined;
    try {
      // At open only, waiting for a lock is fine (another Fennec sharing the file may be writing).
      db = new Database(path, { timeout: 5000 });
      // Checks the file's header and schema: garbage fails here, before anything is written.
      db.prepare("SELECT count(*) FROM sqlite_schema").get();
      if (!memory) this.#owner = ownerLock(path);
      // Before WAL: a new file's auto_vacuum can only be set while it has no pages at all.
      migrate(db, this.describe);
      db.pragma("journal_mode = WAL");
      db.pragma("synchronous = FULL");
      // The writer thread checkpoints (an fsync of the database file): never this thread.
      db.pragma("wal_autocheckpoint = 0");
      db.pragma(`journal_size_limit = ${64 * 2 ** 20}`);
      // From now on this connection never waits inside SQLite (see whenFree).
      db.pragma("busy_timeout = 0");
    } catch (err) {
      db?.close();
      this.#owner?.close();
      throw storeError(err, this.describe, "opening it");
    }
    this.soleOwner = this.#owner !== undefined;
    this.#db = db;
    this.#sql = statements(db);
    this.#pages = new RecordPages(db);
    this.#state = new StateOps(db);
    this.#group = new GroupCommit(db, (err) => storeError(err, this.describe, "writing"));
    this.#behind = new WriteBehind(
      memory ? { db } : { path },
      options,
      (ids, lines) => {
        // The records went over as columns: one somebody waits for is read back (rarely any).
        if (this.#waiters.any) for (const id of ids) if (this.#waiters.waiting(id)) this.#tellWritten(id);
        if (this.#followers.any) for (const l of lines) this.#followers.tell(l);
      },
      (err, dropped) =>
        this.#log?.warn("invocation store: records and log lines not written", {
          store: this.describe,
          dropped,
          error: storeError(err, this.describe, "writing records").message,
        }),
    );
  }

  #tellWritten(id: string): void {
    let record: CallRecord | undefined;
    try {
      record = this.#record(id);
    } catch {
      // A read in WAL mode is never kept waiting: this is a failing disk, where a record whose
      // write failed leaves its waiter waiting too (until its signal or close).
      return;
    }
    if (record !== undefined && TERMINAL_STATES.has(record.state)) this.#waiters.finished(record);
  }

  /** A call as `calls` has it, else as a record page does (a row is the later write: see RecordPages). */
  #record(id: string): CallRecord | undefined {
    const row = this.#sql.call.get(id);
    return row === undefined ? this.#pages.find(id) : recordOf(row);
  }

  #open(): void {
    if (this.#closed) throw new FennecError("STORE_UNAVAILABLE", `${this.describe} is closed`);
  }

  #write<T>(op: (tx: TxContext) => T): Promise<T> {
    try {
      this.#open();
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#group.run(op);
  }

  async #read<T>(doing: string, op: () => T): Promise<T> {
    try {
      this.#open();
      // A read sees every record and line handed over before it.
      await this.#behind.flush();
      return await whenFree(op);
    } catch (err) {
      throw storeError(err, this.describe, doing);
    }
  }

  // --- async calls ---

  enqueue(call: NewAsyncCall): Promise<{ readonly id: string; readonly created: boolean }> {
    return this.#write(() => {
      const s = this.#sql;
      if (call.idempotencyKey !== undefined) {
        const first = s.byIdempotency.get(call.function, call.idempotencyKey);
        if (first !== undefined) return { id: first, created: false };
      }
      if (s.exists.get(call.id) !== undefined)
        throw new FennecError("BAD_REQUEST", `a call with id ${call.id} already exists`);
      const r = call.request;
      const headers = headersBytes(r.headers);
      const record = queuedRecord(call);
      const bytes = recordBytes(record) + r.body.byteLength + headers.length + r.path.length + r.query.length;
      s.insertCall.run(rowOf(record, bytes));
      s.insertRequest.run(call.id, r.method, r.path, r.query, headers, blob(r.body));
      return { id: call.id, created: true };
    });
  }

  take(opts: {
    readonly node: string;
    readonly max: number;
    readonly leaseMs: number;
    readonly now: number;
    readonly skip?: ReadonlySet<string>;
  }): Promise<LeasedCall[]> {
    return this.#write(() => {
      const s = this.#sql;
      // Leases of a node that died run out here: those calls are due again.
      s.expireLeases.run(opts.now);
      if (opts.max <= 0) return [];
      const due = s.due.all(opts.now, JSON.stringify([...(opts.skip ?? [])]), opts.max);
      return due.map((row) => {
        const queueWaitMs = opts.now - Math.max(row.submitted_at, row.not_before ?? 0);
        s.lease.run(opts.node, opts.now, opts.now + opts.leaseMs, queueWaitMs, row.id);
        return {
          record: recordOf({
            ...row,
            state: "running",
            node: opts.node,
            attempt: row.attempt + 1,
            started_at: opts.now,
            queue_wait_ms: queueWaitMs,
          }),
          request: requestOf(s.request.get(row.id)!),
        };
      });
    });
  }

  extendLease(id: string, node: string, leaseMs: number, now: number): Promise<boolean> {
    return this.#write(() => this.#sql.extend.run(now + leaseMs, id, node).changes > 0);
  }

  requeueRunning(node: string): Promise<number> {
    return this.#write(() => this.#sql.requeueNode.run(node).changes);
  }

  /** The call `node` may end: its own running call, or one whose lease ran out and no node took again. */
  #ending(id: string, node: string, doing: string): CallRow {
    const row = this.#sql.call.get(id);
    if (row === undefined) {
      const record = this.#pages.find(id);
      if (record === undefined) throw new FennecError("CALL_NOT_FOUND", `no call ${id}`);
      throw new FennecError("CALL_STATE", `call ${id} is ${record.state}: ${node} cannot ${doing} it`);
    }
    const mine = row.state === "running" && row.node === node;
    if (!mine && row.state !== "queued")
      throw new FennecError(
        "CALL_STATE",
        `call ${id} is ${row.state}${row.node ? ` on ${row.node}` : ""}: ${node} cannot ${doing} it`,
      );
    return row;
  }

  #update(id: string, fixed: Record<string, unknown>, figures: Partial<CallRecord>): void {
    const { sets, values } = figureColumns(figures);
    const names = Object.keys(fixed);
    const sql = `UPDATE calls SET ${[...names.map((n) => `${n} = ?`), ...sets].join(", ")} WHERE id = ?`;
    this.#sql.cached(sql).run(...names.map((n) => fixed[n]), ...values, id);
  }

  #finished(tx: TxContext, id: string): void {
    const record = recordOf(this.#sql.call.get(id)!);
    tx.onCommit(() => this.#waiters.finished(record));
  }

  finish(
    id: string,
    node: string,
    outcome: {
      readonly state: "succeeded" | "failed";
      readonly response: StoredResponse | undefined;
      readonly figures: Partial<CallRecord>;
    },
  ): Promise<void> {
    return this.#write((tx) => {
      const row = this.#ending(id, node, "finish");
      let bytes = 0;
      const res = outcome.response;
      if (res) {
        const headers = headersBytes(res.headers);
        bytes = res.body.byteLength + headers.length;
        this.#sql.insertResponse.run(id, res.status, headers, blob(res.body));
      }
      this.#update(
        id,
        {
          state: outcome.state,
          node,
          finished_at: outcome.figures.finishedAt ?? Date.now(),
          lease_until: null,
          not_before: null,
          bytes: this.#sql.bytes.get(id)! + bytes,
          callback_state: pendingIfCallback(row),
          callback_node: null,
        },
        res ? { status: res.status, ...outcome.figures } : outcome.figures,
      );
      this.#finished(tx, id);
    });
  }

  retry(id: string, node: string, notBefore: number, figures: Partial<CallRecord>): Promise<void> {
    return this.#write(() => {
      this.#ending(id, node, "retry");
      this.#update(id, { state: "queued", node: null, lease_until: null, not_before: notBefore }, figures);
    });
  }

  bury(id: string, node: string, figures: Partial<CallRecord>): Promise<void> {
    return this.#write((tx) => {
      const row = this.#ending(id, node, "bury");
      this.#update(
        id,
        {
          state: "dead",
          callback_state: pendingIfCallback(row),
          callback_node: null,
          node,
          lease_until: null,
          not_before: null,
          finished_at: figures.finishedAt ?? Date.now(),
        },
        figures,
      );
      this.#finished(tx, id);
    });
  }

  callbackEnded(id: string, state: "delivered" | "given-up"): Promise<void> {
    return this.#write(() => {
      this.#sql.callbackEnded.run(state, id);
    });
  }

  pendingCallbacks(limit: number): Promise<CallRecord[]> {
    return this.#read("listing pending callbacks", () =>
      this.#sql.pendingCallbacks.all(Math.max(1, Math.trunc(limit))).map(recordOf),
    );
  }

  takeCallbacks(from: string, to: string, limit: number): Promise<CallRecord[]> {
    return this.#write(() =>
      this.#sql.takeCallbacks
        .all(to, from, Math.max(1, Math.trunc(limit)))
        .map(recordOf)
        .sort((a, b) => (a.finishedAt ?? 0) - (b.finishedAt ?? 0) || (a.id < b.id ? -1 : 1)),
    );
  }

  replay(id: string, now: number): Promise<boolean> {
    return this.#write(() => {
      const row = this.#sql.call.get(id);
      if (row?.state !== "dead") return false;
      const bytes = this.#sql.bytes.get(id)! - (this.#sql.responseBytes.get(id) ?? 0);
      this.#sql.deleteResponse.run(id);
      // A replay is a new submission: its maximum age counts from now, not from the first one.
      this.#update(
        id,
        {
          state: "queued",
          node: null,
          attempt: 0,
          submitted_at: now,
          started_at: null,
          finished_at: null,
          not_before: null,
          lease_until: null,
          // The replay ends again and calls back again; the old delivery is not resumed.
          callback_state: null,
          callback_node: null,
          bytes,
        },
        CLEARED_FIGURES,
      );
      return true;
    });
  }

  async delete(id: string): Promise<boolean> {
    // A record still written behind would come back after the delete: write it first.
    await this.#behind.flush();
    return this.#write((tx) => {
      const row = this.#sql.call.get(id);
      if (row === undefined) {
        if (!this.#pages.remove(id)) return false;
        tx.onCommit(() => this.#waiters.gone(id));
        return true;
      }
      if (row.state === "running")
        throw new FennecError("CALL_STATE", `call ${id} is running on ${row.node}: it cannot be deleted now`);
      // A record handed over again may be in a page too (see RecordPages): both go.
      this.#pages.remove(id);
      this.#sql.deleteCall.run(id);
      this.#sql.deleteRequest.run(id);
      this.#sql.deleteResponse.run(id);
      tx.onCommit(() => this.#waiters.gone(id));
      return true;
    });
  }

  whenFinished(id: string, signal?: AbortSignal): Promise<CallRecord> {
    return this.#read("waiting for a call", () => {
      const record = this.#record(id);
      if (record === undefined) throw new FennecError("CALL_NOT_FOUND", `no call ${id}`);
      if (TERMINAL_STATES.has(record.state)) return record;
      return undefined;
    }).then((done) => done ?? this.#waiters.wait(id, signal));
  }

  // --- records ---

  record(record: CallRecord): void {
    if (this.#closed) return;
    this.#behind.record(record);
  }

  recordSync(end: SyncCallEnd): void {
    if (this.#closed) return;
    this.#behind.recordSync(end);
  }

  /** Writes what is written behind (records, log lines) now. */
  flush(): Promise<void> {
    return this.#read("writing records", () => undefined);
  }

  get(id: string): Promise<CallRecord | undefined> {
    return this.#read("reading a call", () => this.#record(id));
  }

  response(id: string): Promise<StoredResponse | undefined> {
    return this.#read("reading a result", () => {
      const row = this.#sql.response.get(id);
      return row === undefined ? undefined : responseOf(row);
    });
  }

  list(query: CallQuery): Promise<CallRecord[]> {
    return this.#read("listing calls", () => {
      const status = query.status;
      const { where, values } = filters([
        ["function = ?", query.function],
        ["state = ?", query.state],
        ["kind = ?", query.kind],
        ["status = ?", typeof status === "number" ? status : undefined],
        ["error_code = ?", typeof status === "string" ? status : undefined],
        ["parent_id = ?", query.parentId],
        ["submitted_at >= ?", query.since],
      ]);
      const limit = Math.min(Math.max(Math.trunc(query.limit ?? 100), 1), 1000);
      // Newest first is by id: call ids are time-ordered (UUID v7), and the table is clustered on
      // them (schema 3), so this walks the table (or calls_function) backwards and stops at the limit.
      const sql = `SELECT * FROM calls${where.length ? ` WHERE ${where.join(" AND ")}` : ""}
        ORDER BY id DESC LIMIT ?`;
      const rows = (this.#sql.cached(sql).all(...values, limit) as CallRow[]).map(recordOf);
      // Then the record pages' (schema 6), merged by id; a row is the later write of an id.
      const paged = this.#pages.list(query, limit);
      if (paged.size === 0) return rows;
      for (const r of rows) paged.set(r.id, r);
      return [...paged.values()].sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0)).slice(0, limit);
    });
  }

  queueFigures(): Promise<ReadonlyMap<string, QueueFigures>> {
    return this.#read("counting the queue", () => {
      const now = Date.now();
      const out = new Map<string, QueueFigures>();
      for (const r of this.#sql.figures.all())
        out.set(r.function, {
          queued: r.queued,
          running: r.running,
          dead: r.dead,
          oldestQueuedAgeMs: r.oldest === null ? 0 : Math.max(0, now - r.oldest),
        });
      return out;
    });
  }

  // --- logs ---

  appendLogs(lines: readonly LogLine[]): void {
    if (this.#closed || lines.length === 0) return;
    this.#behind.logs(lines);
  }

  logs(query: LogQuery): Promise<StoredLogLine[]> {
    return this.#read("reading logs", () => {
      const { where, values } = filters([
        ["function = ?", query.function],
        ["call_id = ?", query.callId],
        ["time >= ?", query.since],
        ["seq > ?", query.afterSeq],
      ]);
      const limit = Math.min(Math.max(Math.trunc(query.limit ?? 1000), 1), 10_000);
      const sql = `SELECT * FROM logs${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY seq LIMIT ?`;
      return (this.#sql.cached(sql).all(...values, limit) as LogRow[]).map((r) => ({
        seq: r.seq,
        time: r.time,
        function: r.function,
        callId: r.call_id ?? undefined,
        instanceId: r.instance_id ?? undefined,
        stream: r.stream as LogLine["stream"],
        text: r.text,
      }));
    });
  }

  followLogs(
    query: Pick<LogQuery, "function" | "callId">,
    listener: (line: StoredLogLine) => void,
  ): () => void {
    return this.#followers.follow(query, listener);
  }

  // --- state ---

  stateGet(user: string, key: string): Promise<Uint8Array | undefined> {
    return this.#read("reading state", () => this.#state.get(user, key));
  }
  stateSet(user: string, key: string, value: Uint8Array): Promise<void> {
    return this.#write(() => this.#state.set(user, key, value));
  }
  stateWrite(user: string, key: string, offset: number, value: Uint8Array): Promise<void> {
    return this.#write(() => this.#state.write(user, key, offset, value));
  }
  stateAppend(user: string, key: string, value: Uint8Array): Promise<void> {
    return this.#write(() => this.#state.append(user, key, value));
  }
  stateAppended(user: string, key: string): Promise<Uint8Array[]> {
    return this.#read("reading state", () => this.#state.appended(user, key));
  }
  stateClearAppended(user: string, key: string): Promise<void> {
    return this.#write(() => this.#state.clearAppended(user, key));
  }
  stateDelete(user: string, key: string): Promise<boolean> {
    return this.#write(() => this.#state.delete(user, key));
  }
  stateKeys(user: string): Promise<string[]> {
    return this.#read("reading state", () => this.#state.keys(user));
  }

  // --- housekeeping ---

  async prune(policy: RetentionPolicy, now: number): Promise<PruneResult> {
    this.#open();
    await this.#behind.flush();
    try {
      return await prune(this.#db, policy, now, () => this.#closed);
    } catch (err) {
      throw storeError(err, this.describe, "pruning");
    }
  }

  sizeBytes(): Promise<number> {
    return this.#read("measuring", () => {
      const pages = this.#db.pragma("page_count", { simple: true }) as number;
      const size = this.#db.pragma("page_size", { simple: true }) as number;
      return pages * size;
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#group.commit();
    await this.#behind.close();
    this.#waiters.closeAll(new FennecError("STORE_UNAVAILABLE", `${this.describe} closed`));
    try {
      this.#db.close();
      this.#owner?.close();
    } catch (err) {
      throw storeError(err, this.describe, "closing");
    }
  }
}

/**
 * A lock that says "this file is open in a live Fennec": `<path>.lock`, a tiny SQLite database
 * held in exclusive locking mode. The kernel drops it when the process dies however it dies, so a
 * SIGKILL leaves nothing stale. Undefined when another live process holds it: the store is then
 * shared (two Fennecs serving one registry), which SQLite allows, but calls marked running may be
 * that process's, so only leases that run out give them back.
 */
function ownerLock(path: string): Database.Database | undefined {
  const lock = new Database(`${path}.lock`, { timeout: 0 });
  try {
    lock.pragma("locking_mode = EXCLUSIVE");
    // Its content is nothing: no journal file beside it.
    lock.pragma("journal_mode = OFF");
    // The first write takes the exclusive lock; exclusive mode keeps it until close.
    lock.pragma("user_version = 1");
    return lock;
  } catch (err) {
    lock.close();
    if ((err as { code?: string }).code?.startsWith("SQLITE_BUSY")) return undefined;
    throw err;
  }
}

/** The WHERE clauses (and their values) of the filters a query sets. */
function filters(pairs: ReadonlyArray<readonly [string, unknown]>): { where: string[]; values: unknown[] } {
  const set = pairs.filter(([, v]) => v !== undefined);
  return { where: set.map(([c]) => c), values: set.map(([, v]) => v) };
}

interface LogRow {
  seq: number;
  time: number;
  function: string;
  call_id: string | null;
  instance_id: string | null;
  stream: string;
  text: string;
}

interface FigureRow {
  function: string;
  queued: number;
  running: number;
  dead: number;
  oldest: number | null;
}

/** The statements the store runs often, prepared once. */
function statements(db: Database.Database) {
  const cache = new Map<string, Statement>();
  return {
    /** A statement built from a query's filters, prepared once per shape. */
    cached(sql: string): Statement {
      let s = cache.get(sql);
      if (!s) cache.set(sql, (s = db.prepare(sql)));
      return s;
    },
    call: db.prepare<[string], CallRow>("SELECT * FROM calls WHERE id = ?"),
    callbackEnded: db.prepare<[string, string]>(
      "UPDATE calls SET callback_state = ? WHERE id = ? AND callback_state = 'pending'",
    ),
    pendingCallbacks: db.prepare<[number], CallRow>(
      "SELECT * FROM calls WHERE callback_state = 'pending' ORDER BY finished_at, id LIMIT ?",
    ),
    takeCallbacks: db.prepare<[string, string, number], CallRow>(
      `UPDATE calls SET callback_node = ? WHERE id IN (SELECT id FROM calls WHERE callback_state = 'pending'
        AND coalesce(callback_node, node) = ? ORDER BY finished_at, id LIMIT ?) RETURNING *`,
    ),
    exists: db.prepare<[string], number>("SELECT 1 FROM calls WHERE id = ?").pluck(),
    bytes: db.prepare<[string], number>("SELECT bytes FROM calls WHERE id = ?").pluck(),
    byIdempotency: db
      .prepare<[string, string], string>("SELECT id FROM calls WHERE function = ? AND idempotency_key = ?")
      .pluck(),
    insertCall: db.prepare(INSERT_CALL),
    insertRequest: db.prepare(
      "INSERT INTO requests (call_id, method, path, query, headers, body) VALUES (?, ?, ?, ?, ?, ?)",
    ),
    request: db.prepare<[string], RequestRow>("SELECT * FROM requests WHERE call_id = ?"),
    insertResponse: db.prepare(
      "INSERT OR REPLACE INTO responses (call_id, status, headers, body) VALUES (?, ?, ?, ?)",
    ),
    response: db.prepare<[string], ResponseRow>("SELECT * FROM responses WHERE call_id = ?"),
    responseBytes: db
      .prepare<[string], number>("SELECT length(body) + length(headers) FROM responses WHERE call_id = ?")
      .pluck(),
    expireLeases: db.prepare(
      "UPDATE calls SET state = 'queued', node = NULL, lease_until = NULL WHERE state = 'running' AND lease_until < ?",
    ),
    due: db.prepare<[number, string, number], CallRow>(
      `SELECT * FROM calls WHERE state = 'queued' AND (not_before IS NULL OR not_before <= ?)
        AND function NOT IN (SELECT value FROM json_each(?)) ORDER BY submitted_at, id LIMIT ?`,
    ),
    lease: db.prepare(
      `UPDATE calls SET state = 'running', node = ?, attempt = attempt + 1, started_at = ?, lease_until = ?,
        queue_wait_ms = ? WHERE id = ?`,
    ),
    extend: db.prepare("UPDATE calls SET lease_until = ? WHERE id = ? AND node = ? AND state = 'running'"),
    requeueNode: db.prepare(
      "UPDATE calls SET state = 'queued', node = NULL, lease_until = NULL WHERE state = 'running' AND node = ?",
    ),
    deleteCall: db.prepare("DELETE FROM calls WHERE id = ?"),
    deleteRequest: db.prepare("DELETE FROM requests WHERE call_id = ?"),
    deleteResponse: db.prepare("DELETE FROM responses WHERE call_id = ?"),
    figures: db.prepare<[], FigureRow>(
      `SELECT function,
        count(*) FILTER (WHERE state = 'queued') AS queued,
        count(*) FILTER (WHERE state = 'running') AS running,
        count(*) FILTER (WHERE state = 'dead') AS dead,
        min(submitted_at) FILTER (WHERE state = 'queued') AS oldest
        FROM calls WHERE state IN ('queued', 'running', 'dead') AND kind = 'async' GROUP BY function`,
    ),
  };
}
