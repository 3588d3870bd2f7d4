import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { FennecError } from "../../core/errors.js";
import type { Logger } from "../../core/log.js";
import { CallWaiters } from "../call-waiters.js";
import { CLEARED_FIGURES, queuedRecord, syncCallRecord } from "../new-call.js";
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
  type StoredRequest,
  type StoredResponse,
  type SyncCallEnd,
} from "../contract.js";
import type { Blobs } from "./blobs.js";
import { decodeDoc, docOfRecord, encodeDoc, recordOf, updated, type CallDoc } from "./call-doc.js";
import { LogStream } from "./logs.js";
import { CallMirror, type Entry } from "./mirror.js";
import { callKey, idempotencyKey, type StoreNames } from "./names.js";
import { Payloads } from "./payloads.js";
import { RecordsBehind } from "./records-behind.js";
import { prune } from "./retention.js";
import { StateStore } from "./state.js";

/** The buckets a store works on, opened by `openClusterStore`. */
export interface JetStreamBuckets {
  readonly calls: KV;
  readonly payloads: KV;
  readonly idempotency: KV;
  readonly state: KV;
  readonly blobs: Blobs;
}

export interface JetStreamStoreOptions {
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly names: StoreNames;
  readonly buckets: JetStreamBuckets;
  readonly describe: string;
  readonly log?: Logger | undefined;
}

/**
 * How long an idempotency key may name a call that does not exist before a resubmission takes it
 * as left by a crash between an enqueue's writes (they are milliseconds apart).
 */
const STALE_KEY_MS = 5_000;

/** Compare-and-set rounds on one call before giving up (only under absurd contention). */
const CAS_ROUNDS = 20;

const isConflict = (err: unknown): boolean =>
  /wrong last sequence|key exists|10071/i.test(String((err as Error)?.message ?? err));

const olderFirst = (a: CallDoc, b: CallDoc): number =>
  a.submittedAt - b.submittedAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

/**
 * The `k` oldest docs that pass `keep`, oldest first: one pass over the mirror keeping a small
 * sorted array, not a sort of every queued call on each take.
 */
function oldest(entries: Iterable<Entry>, k: number, keep: (d: CallDoc) => boolean): CallDoc[] {
  const out: CallDoc[] = [];
  for (const { doc } of entries) {
    if (out.length === k && olderFirst(doc, out[k - 1]!) >= 0) continue;
    if (!keep(doc)) continue;
    let lo = 0;
    let hi = out.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (olderFirst(out[mid]!, doc) <= 0) lo = mid + 1;
      else hi = mid;
    }
    out.splice(lo, 0, doc);
    if (out.length > k) out.pop();
  }
  return out;
}

/** Thrown inside a change that does not apply any more (taken by another node meanwhile). */
class Skip extends Error {}

/**
 * The cluster's invocation store, on NATS JetStream (docs/cluster.md): every node opens the same
 * buckets and streams, and any node may take any call. Leases are fields of a call's key-value
 * entry changed by compare-and-set on its revision (not JetStream's ack_wait: a lease's clock is
 * the contract's `now`, a call may be skipped while its function is busy, and its backoff
 * (`notBefore`) is per call, none of which a consumer's redelivery expresses on nats-server 2.9).
 */
export class JetStreamStore implements InvocationStore {
  readonly describe: string;
  /** Other nodes share the store: a call marked running may be theirs (see requeueOrphans). */
  readonly soleOwner = false;
  readonly #o: JetStreamStoreOptions;
  readonly #calls: KV;
  readonly #mirror: CallMirror;
  readonly #waiters = new CallWaiters();
  readonly #logs: LogStream;
  readonly #state: StateStore;
  readonly #payloads: Payloads;
  /** Sync records handed over and not yet written: reads see them. */
  readonly #behind: RecordsBehind;
  #closed = false;

  private constructor(o: JetStreamStoreOptions) {
    this.#o = o;
    this.describe = o.describe;
    this.#calls = o.buckets.calls;
    this.#mirror = new CallMirror((id, entry) => {
      if (entry === undefined) this.#waiters.gone(id);
      else if (TERMINAL_STATES.has(entry.doc.state)) this.#waiters.finished(recordOf(entry.doc));
    });
    this.#logs = new LogStream(o.js, o.jsm, o.names, (err, dropped) =>
      o.log?.warn("invocation store: log lines not written", {
        store: this.describe,
        dropped,
        error: (err as Error).message,
      }),
    );
    this.#behind = new RecordsBehind((batch) => this.#writeRecords(batch));
    this.#payloads = new Payloads(o.buckets.payloads, o.buckets.blobs);
    this.#state = new StateStore(o.buckets.state, o.buckets.blobs, o.js, o.jsm, o.names);
  }

  /** Opens the store on buckets that exist; resolves once every call is loaded. */
  static async open(o: JetStreamStoreOptions): Promise<JetStreamStore> {
    const store = new JetStreamStore(o);
    store.#mirror.onWatchError = (err) =>
      o.log?.warn("invocation store: the watch of calls failed; it starts again", {
        store: store.describe,
        error: (err as Error).message,
      });
    await store.#mirror.start(o.buckets.calls);
    return store;
  }

  async #guard<T>(doing: string, op: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new FennecError("STORE_UNAVAILABLE", `${this.describe} is closed`);
    try {
      return await op();
    } catch (err) {
      if (err instanceof FennecError) throw err;
      throw new FennecError(
        "STORE_UNAVAILABLE",
        `${this.describe}: ${doing} failed: ${(err as Error).message}`,
        {
          cause: err,
        },
      );
    }
  }

  /** The call's entry as the bucket has it now (also brought into the mirror). */
  async #fresh(id: string): Promise<Entry | undefined> {
    const e = await this.#calls.get(callKey(id));
    if (!e) return undefined;
    if (e.operation !== "PUT") {
      this.#mirror.remove(id, e.revision);
      return undefined;
    }
    const entry = { doc: decodeDoc(e.value), rev: e.revision };
    this.#mirror.put(id, entry);
    return this.#mirror.get(id);
  }

  /**
   * Changes one call by compare-and-set: `change` sees the current doc and returns the next one
   * (or throws); on a conflict it runs again on the fresh doc.
   */
  async #change(id: string, change: (doc: CallDoc) => CallDoc): Promise<CallDoc> {
    let entry = this.#mirror.get(id) ?? (await this.#fresh(id));
    for (let round = 0; round < CAS_ROUNDS; round++) {
      if (!entry) throw new FennecError("CALL_NOT_FOUND", `no call ${id}`);
      const next = change(entry.doc);
      try {
        const rev = await this.#calls.update(callKey(id), encodeDoc(next), entry.rev);
        this.#mirror.put(id, { doc: next, rev });
        return next;
      } catch (err) {
        if (!isConflict(err)) throw err;
        entry = await this.#fresh(id);
      }
    }
    throw new FennecError("STORE_UNAVAILABLE", `call ${id} changes too often to be written`);
  }

  // --- async calls ---

  enqueue(call: NewAsyncCall): Promise<{ readonly id: string; readonly created: boolean }> {
    return this.#guard("accepting a call", async () => {
      const key =
        call.idempotencyKey === undefined ? undefined : idempotencyKey(call.function, call.idempotencyKey);
      if (key !== undefined) {
        const first = await this.#claimKey(key, call.id);
        if (first !== undefined) return { id: first, created: false };
      }
      const r = call.request;
      const headers = JSON.stringify(r.headers);
      try {
        await this.#payloads.putRequest(call.id, r);
      } catch (err) {
        if (isConflict(err)) throw new FennecError("BAD_REQUEST", `a call with id ${call.id} already exists`);
        throw err;
      }
      const base = docOfRecord(queuedRecord(call));
      const doc = updated(base, {
        bytes: base.bytes + r.body.byteLength + headers.length + r.path.length + r.query.length,
      });
      const rev = await this.#calls.create(callKey(call.id), encodeDoc(doc));
      this.#mirror.put(call.id, { doc, rev });
      if (key !== undefined) {
        // This enqueue stalled so long between its writes that a resubmission took the key as
        // stale (#claimKey): the key's call is the one; this one is withdrawn if nobody took it yet.
        const now = await this.#o.buckets.idempotency.get(key);
        const winner = now?.operation === "PUT" ? now.string() : call.id;
        if (winner !== call.id && (await this.#withdraw(call.id, rev))) return { id: winner, created: false };
      }
      return { id: call.id, created: true };
    });
  }

  /**
   * Claims an idempotency key for call `id`: undefined when it is this call's now, else the id of
   * the call the key made. The key is written before the call (its create is what makes two
   * twins agree), so a crash between the writes leaves a key naming no call: a resubmission that
   * finds such a key waits STALE_KEY_MS (an enqueue under way writes its call within a round trip
   * or two) and then replaces it by compare-and-set, so one resubmission wins it.
   */
  async #claimKey(key: string, id: string): Promise<string | undefined> {
    const keys = this.#o.buckets.idempotency;
    let missingSince: number | undefined;
    for (;;) {
      try {
        await keys.create(key, id);
        return undefined;
      } catch (err) {
        if (!isConflict(err)) throw err;
      }
      const first = await keys.get(key);
      // Deleted meanwhile (its call was deleted): create it again.
      if (!first || first.operation !== "PUT") continue;
      const firstId = first.string();
      if (this.#mirror.get(firstId) ?? (await this.#fresh(firstId))) return firstId;
      missingSince ??= Date.now();
      if (Date.now() - missingSince < STALE_KEY_MS) {
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      try {
        await keys.update(key, id, first.revision);
        this.#o.log?.warn(
          "invocation store: an idempotency key named a call that was never written; replaced",
          {
            store: this.describe,
            stale: firstId,
            callId: id,
          },
        );
        return undefined;
      } catch (err) {
        // Another resubmission replaced it first: look again.
        if (!isConflict(err)) throw err;
      }
    }
  }

  /** Removes a call just created, if it is still at revision `rev` (no node has taken it). */
  async #withdraw(id: string, rev: number): Promise<boolean> {
    try {
      await this.#calls.delete(callKey(id), { previousSeq: rev });
    } catch (err) {
      if (isConflict(err)) return false;
      throw err;
    }
    this.#mirror.remove(id, rev + 1);
    await this.#payloads.removeRequest(id);
    return true;
  }

  take(opts: {
    readonly node: string;
    readonly max: number;
    readonly leaseMs: number;
    readonly now: number;
    readonly skip?: ReadonlySet<string>;
  }): Promise<LeasedCall[]> {
    return this.#guard("leasing calls", async () => {
      const { now } = opts;
      // Leases of a node that died run out here: those calls are due again (on any node).
      const expired = [...this.#mirror.values()].filter(
        (e) => e.doc.state === "running" && e.doc.kind === "async" && (e.doc.leaseUntil ?? 0) < now,
      );
      await Promise.all(
        expired.map((e) =>
          this.#change(e.doc.id, (d) => {
            if (d.state !== "running" || (d.leaseUntil ?? 0) >= now) throw new Skip();
            return updated(d, { state: "queued", node: undefined, leaseUntil: undefined });
          }).catch(() => undefined),
        ),
      );
      if (opts.max <= 0) return [];
      const skip = opts.skip ?? new Set<string>();
      const due = (d: CallDoc) =>
        d.state === "queued" && d.kind === "async" && (d.notBefore ?? 0) <= now && !skip.has(d.function);
      const leased: CallDoc[] = [];
      const tried = new Set<string>();
      while (leased.length < opts.max) {
        const batch = oldest(
          this.#mirror.values(),
          opts.max - leased.length,
          (d) => due(d) && !tried.has(d.id),
        );
        if (batch.length === 0) break;
        for (const c of batch) tried.add(c.id);
        const got = await Promise.all(
          batch.map((c) =>
            this.#change(c.id, (d) => {
              if (!due(d)) throw new Skip();
              return updated(d, {
                state: "running",
                node: opts.node,
                attempt: d.attempt + 1,
                startedAt: now,
                leaseUntil: now + opts.leaseMs,
                queueWaitMs: now - Math.max(d.submittedAt, d.notBefore ?? 0),
              });
            }).catch((err: unknown) => {
              if (err instanceof Skip || (err instanceof FennecError && err.code === "CALL_NOT_FOUND"))
                return undefined;
              throw err;
            }),
          ),
        );
        for (const d of got) if (d) leased.push(d);
      }
      leased.sort(olderFirst);
      return Promise.all(
        leased.map(async (d) => ({ record: recordOf(d), request: await this.#request(d.id) })),
      );
    });
  }

  async #request(id: string): Promise<StoredRequest> {
    const request = await this.#payloads.request(id);
    if (!request)
      throw new FennecError("STORE_CORRUPT", `${this.describe}: the request of call ${id} is gone`);
    return request;
  }

  extendLease(id: string, node: string, leaseMs: number, now: number): Promise<boolean> {
    return this.#guard("extending a lease", async () => {
      try {
        await this.#change(id, (d) => {
          if (d.state !== "running" || d.node !== node) throw new Skip();
          return updated(d, { leaseUntil: now + leaseMs });
        });
        return true;
      } catch (err) {
        if (err instanceof Skip || (err instanceof FennecError && err.code === "CALL_NOT_FOUND"))
          return false;
        throw err;
      }
    });
  }

  requeueRunning(node: string): Promise<number> {
    return this.#guard("requeueing calls", async () => {
      const mine = [...this.#mirror.values()].filter((e) => e.doc.state === "running" && e.doc.node === node);
      const done = await Promise.all(
        mine.map((e) =>
          this.#change(e.doc.id, (d) => {
            if (d.state !== "running" || d.node !== node) throw new Skip();
            return updated(d, { state: "queued", node: undefined, leaseUntil: undefined });
          }).then(
            () => true,
            (err: unknown) => {
              if (err instanceof Skip) return false;
              throw err;
            },
          ),
        ),
      );
      return done.filter(Boolean).length;
    });
  }

  /** The call `node` may end: its own running call, or one whose lease ran out and no node took again. */
  static #ending(d: CallDoc, node: string, doing: string): void {
    const mine = d.state === "running" && d.node === node;
    if (!mine && d.state !== "queued")
      throw new FennecError(
        "CALL_STATE",
        `call ${d.id} is ${d.state}${d.node ? ` on ${d.node}` : ""}: ${node} cannot ${doing} it`,
      );
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
    return this.#guard("ending a call", async () => {
      const res = outcome.response;
      let result: string | undefined;
      let resultBytes = 0;
      if (res) {
        // Checked first so a node that lost the call does not write a result for nothing.
        const now = this.#mirror.get(id) ?? (await this.#fresh(id));
        if (!now) throw new FennecError("CALL_NOT_FOUND", `no call ${id}`);
        JetStreamStore.#ending(now.doc, node, "finish");
        ({ result, bytes: resultBytes } = await this.#payloads.putResult(id, res));
      }
      let before: CallDoc | undefined;
      try {
        await this.#change(id, (d) => {
          JetStreamStore.#ending(d, node, "finish");
          before = d;
          return updated(
            d,
            {
              state: outcome.state,
              node,
              finishedAt: outcome.figures.finishedAt ?? Date.now(),
              leaseUntil: undefined,
              notBefore: undefined,
              bytes: d.bytes - (d.resultBytes ?? 0) + resultBytes,
              result,
              resultBytes: res ? resultBytes : undefined,
              callbackState: d.callbackUrl === undefined ? undefined : "pending",
              callbackNode: undefined,
            },
            res ? { status: res.status, ...outcome.figures } : outcome.figures,
          );
        });
      } catch (err) {
        await this.#payloads.removeResult(id, result);
        throw err;
      }
      await this.#payloads.removeResult(id, before?.result);
    });
  }

  retry(id: string, node: string, notBefore: number, figures: Partial<CallRecord>): Promise<void> {
    return this.#guard("retrying a call", async () => {
      await this.#change(id, (d) => {
        JetStreamStore.#ending(d, node, "retry");
        return updated(d, { state: "queued", node: undefined, leaseUntil: undefined, notBefore }, figures);
      });
    });
  }

  bury(id: string, node: string, figures: Partial<CallRecord>): Promise<void> {
    return this.#guard("burying a call", async () => {
      await this.#change(id, (d) => {
        JetStreamStore.#ending(d, node, "bury");
        return updated(
          d,
          {
            state: "dead",
            callbackState: d.callbackUrl === undefined ? undefined : "pending",
            callbackNode: undefined,
            node,
            leaseUntil: undefined,
            notBefore: undefined,
            finishedAt: figures.finishedAt ?? Date.now(),
          },
          figures,
        );
      });
    });
  }

  callbackEnded(id: string, state: "delivered" | "given-up"): Promise<void> {
    return this.#guard("recording a callback", async () => {
      try {
        await this.#change(id, (d) => {
          if (d.callbackState !== "pending") throw new Skip();
          return updated(d, { callbackState: state });
        });
      } catch (err) {
        if (err instanceof Skip || (err instanceof FennecError && err.code === "CALL_NOT_FOUND")) return;
        throw err;
      }
    });
  }

  pendingCallbacks(limit: number): Promise<CallRecord[]> {
    return this.#guard("listing pending callbacks", async () => {
      const pending = [...this.#mirror.values()]
        .map((e) => e.doc)
        .filter((d) => d.callbackState === "pending")
        .sort((a, b) => (a.finishedAt ?? 0) - (b.finishedAt ?? 0) || (a.id < b.id ? -1 : 1));
      return pending.slice(0, Math.max(1, Math.trunc(limit))).map(recordOf);
    });
  }

  takeCallbacks(from: string, to: string, limit: number): Promise<CallRecord[]> {
    return this.#guard("taking over callbacks", async () => {
      const deliverer = (d: CallDoc) => d.callbackNode ?? d.node;
      const theirs = [...this.#mirror.values()]
        .map((e) => e.doc)
        .filter((d) => d.callbackState === "pending" && deliverer(d) === from)
        .sort((a, b) => (a.finishedAt ?? 0) - (b.finishedAt ?? 0) || (a.id < b.id ? -1 : 1))
        .slice(0, Math.max(1, Math.trunc(limit)));
      const taken = await Promise.all(
        theirs.map((c) =>
          // Compare-and-set: of several nodes taking over at once, one moves each callback.
          this.#change(c.id, (d) => {
            if (d.callbackState !== "pending" || deliverer(d) !== from) throw new Skip();
            return updated(d, { callbackNode: to });
          }).catch((err: unknown) => {
            if (err instanceof Skip || (err instanceof FennecError && err.code === "CALL_NOT_FOUND"))
              return undefined;
            throw err;
          }),
        ),
      );
      return taken.flatMap((d) => (d ? [recordOf(d)] : []));
    });
  }

  replay(id: string, now: number): Promise<boolean> {
    return this.#guard("replaying a call", async () => {
      let before: CallDoc | undefined;
      try {
        await this.#change(id, (d) => {
          if (d.state !== "dead") throw new Skip();
          before = d;
          // A replay is a new submission: its maximum age counts from now, not from the first one.
          return updated(
            d,
            {
              state: "queued",
              node: undefined,
              attempt: 0,
              submittedAt: now,
              startedAt: undefined,
              finishedAt: undefined,
              notBefore: undefined,
              leaseUntil: undefined,
              // The replay ends again and calls back again; the old delivery is not resumed.
              callbackState: undefined,
              callbackNode: undefined,
              bytes: d.bytes - (d.resultBytes ?? 0),
              result: undefined,
              resultBytes: undefined,
            },
            CLEARED_FIGURES,
          );
        });
      } catch (err) {
        if (err instanceof Skip || (err instanceof FennecError && err.code === "CALL_NOT_FOUND"))
          return false;
        throw err;
      }
      await this.#payloads.removeResult(id, before?.result);
      return true;
    });
  }

  delete(id: string): Promise<boolean> {
    return this.#guard("deleting a call", async () => {
      // A record still written behind would come back after the delete: write it first.
      await this.flush();
      for (let round = 0; round < CAS_ROUNDS; round++) {
        const e = await this.#fresh(id);
        if (!e) return false;
        if (e.doc.state === "running")
          throw new FennecError(
            "CALL_STATE",
            `call ${id} is running on ${e.doc.node}: it cannot be deleted now`,
          );
        if (await this.#remove(id, e)) return true;
      }
      throw new FennecError("STORE_UNAVAILABLE", `call ${id} changes too often to be deleted`);
    });
  }

  /** Deletes a call if it is still at `entry`'s revision, then its payloads and idempotency key. */
  async #remove(id: string, entry: Entry): Promise<boolean> {
    try {
      await this.#calls.delete(callKey(id), { previousSeq: entry.rev });
    } catch (err) {
      if (isConflict(err)) return false;
      throw err;
    }
    // The delete marker's revision is the next one the watch brings; the entry goes now.
    this.#mirror.remove(id, entry.rev + 1);
    const d = entry.doc;
    await Promise.all([
      this.#payloads.removeRequest(id),
      this.#payloads.removeResult(id, d.result),
      d.idempotencyKey !== undefined
        ? this.#o.buckets.idempotency
            .delete(idempotencyKey(d.function, d.idempotencyKey))
            .catch(() => undefined)
        : undefined,
    ]);
    this.#waiters.gone(id);
    return true;
  }

  whenFinished(id: string, signal?: AbortSignal): Promise<CallRecord> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    const known = (): CallRecord | undefined => {
      const e = this.#mirror.get(id);
      return this.#behind.get(id) ?? (e ? recordOf(e.doc) : undefined);
    };
    const waiting = (async () => {
      let r = known();
      if (!r) {
        await this.#guard("waiting for a call", () => this.#fresh(id));
        r = known();
      }
      if (!r) throw new FennecError("CALL_NOT_FOUND", `no call ${id}`);
      if (TERMINAL_STATES.has(r.state)) return r;
      return this.#waiters.wait(id, signal);
    })();
    // A delete seen on the watch may reject it before its caller has awaited it: not "unhandled".
    waiting.catch(() => undefined);
    return waiting;
  }

  // --- records ---

  record(record: CallRecord): void {
    if (this.#closed) return;
    this.#behind.add(record);
    if (TERMINAL_STATES.has(record.state)) this.#waiters.finished(record);
  }

  recordSync(end: SyncCallEnd): void {
    this.record(syncCallRecord(end));
  }

  async #writeRecords(batch: readonly CallRecord[]): Promise<void> {
    try {
      // Pipelined: one round trip's wait for the whole batch.
      const revs = await Promise.all(
        batch.map((r) => this.#calls.put(callKey(r.id), encodeDoc(docOfRecord(r)))),
      );
      batch.forEach((r, i) => this.#mirror.put(r.id, { doc: docOfRecord(r), rev: revs[i]! }));
    } catch (err) {
      this.#o.log?.warn("invocation store: records not written", {
        store: this.describe,
        dropped: batch.length,
        error: (err as Error).message,
      });
    }
  }

  async flush(): Promise<void> {
    await Promise.all([this.#behind.flush(), this.#logs.flush()]);
  }

  get(id: string): Promise<CallRecord | undefined> {
    return this.#guard("reading a call", async () => {
      const behind = this.#behind.get(id);
      if (behind) return behind;
      const e = this.#mirror.get(id) ?? (await this.#fresh(id));
      return e ? recordOf(e.doc) : undefined;
    });
  }

  response(id: string): Promise<StoredResponse | undefined> {
    return this.#guard("reading a result", async () => {
      let e = this.#mirror.get(id);
      if (!e || e.doc.result === undefined) e = await this.#fresh(id);
      if (!e || e.doc.result === undefined) return undefined;
      return this.#payloads.result(id, e.doc.result);
    });
  }

  list(query: CallQuery): Promise<CallRecord[]> {
    return this.#guard("listing calls", async () => {
      const status = query.status;
      const match = (r: CallRecord) =>
        (query.function === undefined || r.function === query.function) &&
        (query.state === undefined || r.state === query.state) &&
        (query.kind === undefined || r.kind === query.kind) &&
        (typeof status !== "number" || r.status === status) &&
        (typeof status !== "string" || r.errorCode === status) &&
        (query.parentId === undefined || r.parentId === query.parentId) &&
        (query.since === undefined || r.submittedAt >= query.since);
      const limit = Math.min(Math.max(Math.trunc(query.limit ?? 100), 1), 1000);
      const out: CallRecord[] = [];
      for (const r of this.#behind.values()) if (match(r)) out.push(r);
      for (const e of this.#mirror.values())
        if (!this.#behind.has(e.doc.id)) {
          const r = recordOf(e.doc);
          if (match(r)) out.push(r);
        }
      out.sort((a, b) => b.submittedAt - a.submittedAt || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
      return out.slice(0, limit);
    });
  }

  queueFigures(): Promise<ReadonlyMap<string, QueueFigures>> {
    return this.#guard("counting the queue", async () => {
      const now = Date.now();
      const counts = new Map<string, { queued: number; running: number; dead: number; oldest: number }>();
      for (const { doc: d } of this.#mirror.values()) {
        if (d.kind !== "async" || (d.state !== "queued" && d.state !== "running" && d.state !== "dead"))
          continue;
        let c = counts.get(d.function);
        if (!c) counts.set(d.function, (c = { queued: 0, running: 0, dead: 0, oldest: Infinity }));
        c[d.state]++;
        if (d.state === "queued") c.oldest = Math.min(c.oldest, d.submittedAt);
      }
      const out = new Map<string, QueueFigures>();
      for (const [fn, c] of counts)
        out.set(fn, {
          queued: c.queued,
          running: c.running,
          dead: c.dead,
          oldestQueuedAgeMs: c.oldest === Infinity ? 0 : Math.max(0, now - c.oldest),
        });
      return out;
    });
  }

  // --- logs ---

  appendLogs(lines: readonly LogLine[]): void {
    if (this.#closed || lines.length === 0) return;
    this.#logs.append(lines);
  }

  logs(query: LogQuery): Promise<StoredLogLine[]> {
    return this.#guard("reading logs", () => this.#logs.query(query));
  }

  followLogs(
    query: Pick<LogQuery, "function" | "callId">,
    listener: (line: StoredLogLine) => void,
  ): () => void {
    return this.#logs.follow(query, listener);
  }

  // --- state ---

  stateGet(user: string, key: string): Promise<Uint8Array | undefined> {
    return this.#guard("reading state", () => this.#state.get(user, key));
  }
  stateSet(user: string, key: string, value: Uint8Array): Promise<void> {
    return this.#guard("writing state", () => this.#state.set(user, key, value));
  }
  stateWrite(user: string, key: string, offset: number, value: Uint8Array): Promise<void> {
    return this.#guard("writing state", () => this.#state.write(user, key, offset, value));
  }
  stateAppend(user: string, key: string, value: Uint8Array): Promise<void> {
    return this.#guard("appending state", () => this.#state.append(user, key, value));
  }
  stateAppended(user: string, key: string): Promise<Uint8Array[]> {
    return this.#guard("reading state", () => this.#state.appended(user, key));
  }
  stateClearAppended(user: string, key: string): Promise<void> {
    return this.#guard("clearing state", () => this.#state.clearAppended(user, key));
  }
  stateDelete(user: string, key: string): Promise<boolean> {
    return this.#guard("deleting state", () => this.#state.delete(user, key));
  }
  stateKeys(user: string): Promise<string[]> {
    return this.#guard("listing state", () => this.#state.keys(user));
  }

  // --- housekeeping ---

  prune(policy: RetentionPolicy, now: number): Promise<PruneResult> {
    return this.#guard("pruning", async () => {
      await this.flush();
      const { js, jsm, names } = this.#o;
      const result = await prune(
        {
          js,
          jsm,
          logStream: names.logs,
          logFilter: names.logFilter,
          calls: () => this.#mirror.values(),
          removeCall: (id, entry) => this.#remove(id, entry),
          purgeLogsBefore: (seq) => this.#logs.purgeBefore(seq),
          logBytes: async () => (await jsm.streams.info(names.logs)).state.bytes,
          stateBytes: async () =>
            (await jsm.streams.info(`KV_${names.state}`)).state.bytes +
            (await jsm.streams.info(names.appended)).state.bytes,
        },
        policy,
        now,
      );
      // Delete markers of removed calls stay in the bucket (every watcher sees the delete);
      // after half an hour every node has, and they go.
      if (result.calls > 0)
        await (this.#calls as KV & { purgeDeletes(olderMs: number): Promise<unknown> })
          .purgeDeletes(30 * 60_000)
          .catch(() => undefined);
      return result;
    });
  }

  sizeBytes(): Promise<number> {
    return this.#guard("measuring", async () => {
      const n = this.#o.names;
      const streams = [
        `KV_${n.calls}`,
        `KV_${n.payloads}`,
        `KV_${n.idempotency}`,
        `KV_${n.state}`,
        `OBJ_${n.blobs}`,
        n.logs,
        n.appended,
      ];
      const infos = await Promise.all(streams.map((s) => this.#o.jsm.streams.info(s)));
      return infos.reduce((sum, i) => sum + i.state.bytes, 0);
    });
  }

  /** Re-opens the watch of the calls (a server of the NATS cluster was lost: `onServerLost`). */
  rewatch(): void {
    this.#mirror.rewatch();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.flush().catch(() => undefined);
    this.#closed = true;
    await this.#logs.close().catch(() => undefined);
    await this.#behind.flush().catch(() => undefined);
    this.#mirror.stop();
    this.#waiters.closeAll(new FennecError("STORE_UNAVAILABLE", `${this.describe} closed`));
  }
}
