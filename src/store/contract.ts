/**
 * The invocation store: where calls, their records, function logs and per-user state live.
 *
 * One small contract, implemented by the embedded store (SQLite, `sqlite-store.ts`) and by the
 * cluster's (JetStream, a later issue); `test/conformance/store.ts` runs one suite against every
 * implementation, as the sandbox drivers have theirs. Every method is asynchronous because a
 * networked store is; the embedded one answers from the calling thread.
 *
 * Times are milliseconds since the epoch (`Date.now()`): records outlive the process.
 */
import type { InvocationRecord } from "../core/types.js";

/** Where a call is in its life. Sync calls are recorded once they end (`succeeded` or `failed`). */
export type CallState =
  /** Accepted, waiting to run (at once, or at `notBefore` after a failed attempt). */
  | "queued"
  /** Leased by a node and running there. */
  | "running"
  /** Ran, and the function answered with a status that is not retried. */
  | "succeeded"
  /** Ended without a result worth retrying (sync calls; async calls whose fault is not retried). */
  | "failed"
  /** Failed every attempt, or grew older than its maximum age: kept until replayed or deleted. */
  | "dead";

/**
 * Where an ended async call's callback delivery is: `pending` from the write that ends the call
 * until the POST was answered 2xx (`delivered`) or given up (`given-up`). A pending one is
 * delivered again after a restart.
 */
export type CallbackState = "pending" | "delivered" | "given-up";

export const TERMINAL_STATES: ReadonlySet<CallState> = new Set(["succeeded", "failed", "dead"]);

/** A request kept to be run later: what an async call was asked with. */
export interface StoredRequest {
  readonly method: string;
  readonly path: string;
  readonly query: string;
  /** Lower-cased names, as the gateway forwards them. */
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Uint8Array;
}

/** A function's answer kept to be fetched later. */
export interface StoredResponse {
  readonly status: number;
  readonly headers: ReadonlyArray<readonly [string, string]>;
  readonly body: Uint8Array;
}

/** Every call, sync or async, leaves one: OpenWhisk's activation record. */
export interface CallRecord {
  /**
   * A UUID, also sent as `X-Call-Id`. Fennec makes time-ordered ones (UUID v7, `core/call-id.ts`),
   * and a store lists calls in id order: newest first is by id, with no index of its own.
   */
  readonly id: string;
  /** `user/name`. */
  readonly function: string;
  readonly kind: "sync" | "async";
  readonly state: CallState;
  /** The node that ran (or runs) it; undefined while queued. */
  readonly node: string | undefined;
  /** The call that chained this one (Faasm's chaining), if any. */
  readonly parentId: string | undefined;
  /** 1 for the first attempt. 0 while an async call has not run yet. */
  readonly attempt: number;
  readonly submittedAt: number;
  /** When the latest attempt started running. */
  readonly startedAt: number | undefined;
  /** When the call reached a terminal state. */
  readonly finishedAt: number | undefined;
  readonly startType: string | undefined;
  readonly queueWaitMs: number | undefined;
  readonly initMs: number | undefined;
  readonly ttfbMs: number | undefined;
  readonly execMs: number | undefined;
  /** The function's status; undefined when it never answered. */
  readonly status: number | undefined;
  /** A stable Fennec error code when the call failed. */
  readonly errorCode: string | undefined;
  readonly errorMessage: string | undefined;
  /** Async calls: when the next attempt may start (after a backoff). */
  readonly notBefore: number | undefined;
  /** Async calls: the key that makes a resubmission return this call. */
  readonly idempotencyKey: string | undefined;
  /** Async calls: where the result is POSTed. */
  readonly callbackUrl: string | undefined;
  /** Async calls with a callback URL, once ended: where its delivery is. */
  readonly callbackState?: CallbackState | undefined;
  /**
   * A sync call forwarded in a cluster: the node that took it from its client and forwarded it
   * to `node` (docs/cluster.md, "Forwarding"). Undefined when it ran where it came in.
   */
  readonly via?: string | undefined;
  /** A forwarded call: why it went to `node` (`warm`, `home` or `spill`: the placement rule's reason). */
  readonly placement?: string | undefined;
}

/** What the gateway hands the store when it accepts an async call. */
export interface NewAsyncCall {
  readonly id: string;
  readonly function: string;
  readonly parentId?: string | undefined;
  readonly request: StoredRequest;
  readonly submittedAt: number;
  readonly idempotencyKey?: string | undefined;
  readonly callbackUrl?: string | undefined;
}

/** An async call leased to a node to run. */
export interface LeasedCall {
  readonly record: CallRecord;
  readonly request: StoredRequest;
}

/**
 * A sync call that has ended, as the gateway's sync-call service hands it to the store: the
 * scheduler's figures as they came, nothing copied out of them. A store that keeps records as
 * columns reads them straight in; building a CallRecord with its 23 fields per call was most of
 * a record's cost on the gateway's thread (docs/benchmarks.md).
 */
export interface SyncCallEnd {
  readonly id: string;
  /** The node that ran it. */
  readonly node: string;
  readonly submittedAt: number;
  readonly finishedAt: number;
  readonly figures: InvocationRecord;
  /** Why it failed, when the service knows better than the figures (a failure before the head). */
  readonly errorMessage: string | undefined;
  /** A forwarded call's entry node and why it came here (CallRecord's via and placement). */
  readonly via: string | undefined;
  readonly placement: string | undefined;
}

export interface CallQuery {
  readonly function?: string;
  readonly state?: CallState;
  readonly kind?: "sync" | "async";
  /** Only calls whose status is this (e.g. 500), or whose error code is this (e.g. FN_TIMEOUT). */
  readonly status?: number | string;
  readonly parentId?: string;
  /** Submitted at or after this time. */
  readonly since?: number;
  /** Newest first, by id (see CallRecord.id); default 100, at most 1000. */
  readonly limit?: number;
}

/** One line a function wrote. */
export interface LogLine {
  readonly time: number;
  readonly function: string;
  /** The call it was written during, when that is known (one call in flight on its instance). */
  readonly callId: string | undefined;
  readonly instanceId: string | undefined;
  readonly stream: "stdout" | "stderr";
  readonly text: string;
}

/** A stored log line with its position, so a follower can ask for what came after it. */
export interface StoredLogLine extends LogLine {
  readonly seq: number;
}

export interface LogQuery {
  readonly function?: string;
  readonly callId?: string;
  readonly since?: number;
  /** Only lines after this position (a follower's last `seq`). */
  readonly afterSeq?: number;
  /** Oldest first; default 1000, at most 10000. */
  readonly limit?: number;
}

/** Per-function queue figures for /stats and /metrics. */
export interface QueueFigures {
  readonly queued: number;
  readonly running: number;
  readonly dead: number;
  /** Age of the oldest queued call, ms (0 when none). */
  readonly oldestQueuedAgeMs: number;
}

/** What retention removes: finished calls older than `maxAgeMs`, then the oldest until under `maxBytes`. */
export interface RetentionPolicy {
  readonly maxAgeMs: number;
  readonly maxBytes: number;
}

export interface PruneResult {
  readonly calls: number;
  readonly logLines: number;
}

export interface InvocationStore {
  /** What the store is, for /stats and error messages (`sqlite:/path/fennec.db`). */
  readonly describe: string;

  // --- async calls: a durable work queue ---

  /**
   * Makes the call durable before it resolves (the `202` goes out after). With an idempotency key
   * already used for the same function, nothing is added and the first call's id comes back.
   */
  enqueue(call: NewAsyncCall): Promise<{ readonly id: string; readonly created: boolean }>;

  /**
   * Leases up to `max` due queued calls (oldest first), skipping functions in `skip` (those at
   * their instance limits): each becomes `running` on `node` with its attempt counted, until
   * `leaseMs` from now. A lease that expires (its node died) makes the call queued again.
   */
  take(opts: {
    readonly node: string;
    readonly max: number;
    readonly leaseMs: number;
    readonly now: number;
    readonly skip?: ReadonlySet<string>;
  }): Promise<LeasedCall[]>;

  /** Keeps a long call's lease alive. False when the lease is no longer this node's. */
  extendLease(id: string, node: string, leaseMs: number, now: number): Promise<boolean>;

  /**
   * Every call `node` was running goes back to the queue, due at once (a restart after a crash; a
   * node that left the cluster). Its attempt stays counted: the call may have run in part, and
   * the next lease counts the next one. Conditional per call, so calls another node took since
   * are left alone. Returns how many.
   */
  requeueRunning(node: string): Promise<number>;

  /**
   * An attempt ended with a result to keep: `succeeded`, or `failed` when it is not retried.
   * `finish`, `retry` and `bury` apply to the call `node` runs, or to one whose lease ran out that
   * no node took again; they reject with CALL_NOT_FOUND for an unknown id and CALL_STATE when
   * the call is another node's or already ended. `figures.finishedAt` defaults to now.
   */
  finish(
    id: string,
    node: string,
    outcome: {
      readonly state: "succeeded" | "failed";
      readonly response: StoredResponse | undefined;
      readonly figures: Partial<CallRecord>;
    },
  ): Promise<void>;

  /** An attempt failed and is retried at `notBefore`. */
  retry(id: string, node: string, notBefore: number, figures: Partial<CallRecord>): Promise<void>;

  /** The call failed its last attempt (or is too old): dead-lettered with its request kept. */
  bury(id: string, node: string, figures: Partial<CallRecord>): Promise<void>;

  /**
   * `finish` and `bury` make a call with a callback URL's delivery `pending` in the same write;
   * this records how it ended. No-op for a call that is gone.
   */
  callbackEnded(id: string, state: "delivered" | "given-up"): Promise<void>;

  /** Ended calls whose callback is still pending (oldest ended first, at most `limit`). */
  pendingCallbacks(limit: number): Promise<CallRecord[]>;

  /**
   * The pending callbacks `from` was to deliver (the calls it ended, or callbacks it took over)
   * become `to`'s: `from` is a node gone from the cluster, `to` the live one that sends them now.
   * Each moves by a conditional write, so of several nodes asking at once one gets each; returns
   * those this call moved (oldest ended first, at most `limit`).
   */
  takeCallbacks(from: string, to: string, limit: number): Promise<CallRecord[]>;

  /**
   * A dead call runs again from attempt 1, as if submitted at `now` (its maximum age starts again).
   * False when it is not dead (or not there).
   */
  replay(id: string, now: number): Promise<boolean>;

  /**
   * Removes a call and its result (any state but running: CALL_STATE). False when it is not there.
   * Whoever awaits it (`whenFinished`) is rejected with CALL_NOT_FOUND.
   */
  delete(id: string): Promise<boolean>;

  /**
   * Resolves when the call reaches a terminal state (at once if it has). Rejects with
   * CALL_NOT_FOUND if it does not exist, and with the signal's reason when it aborts.
   */
  whenFinished(id: string, signal?: AbortSignal): Promise<CallRecord>;

  // --- records ---

  /** A sync call's record. Written behind (batched): not durable before the response goes out. */
  record(record: CallRecord): void;

  /**
   * The record of a sync call that has ended, `syncCallRecord(end)`, written behind as `record`'s
   * is: the gateway's path, which makes no CallRecord per call (see SyncCallEnd).
   */
  recordSync(end: SyncCallEnd): void;

  /** Writes what is written behind (records, log lines) now; reads see it either way. */
  flush(): Promise<void>;

  get(id: string): Promise<CallRecord | undefined>;
  /** The result of a finished call, if it had one and it was kept. */
  response(id: string): Promise<StoredResponse | undefined>;
  list(query: CallQuery): Promise<CallRecord[]>;
  queueFigures(): Promise<ReadonlyMap<string, QueueFigures>>;

  // --- logs ---

  /** Appends lines (written behind, batched). */
  appendLogs(lines: readonly LogLine[]): void;
  logs(query: LogQuery): Promise<StoredLogLine[]>;
  /** Told of every line appended from now on that matches; returns the function that stops it. */
  followLogs(
    query: Pick<LogQuery, "function" | "callId">,
    listener: (line: StoredLogLine) => void,
  ): () => void;

  // --- per-user state (Faasm's state, SnapFaaS's host store) ---

  stateGet(user: string, key: string): Promise<Uint8Array | undefined>;
  /** Whole value. `maxBytes` bounds one value. */
  stateSet(user: string, key: string, value: Uint8Array): Promise<void>;
  /** Writes `value` at `offset`, growing the value with zeros if needed. */
  stateWrite(user: string, key: string, offset: number, value: Uint8Array): Promise<void>;
  /** Appends to the key's append log (Faasm's appended state), separate from its value. */
  stateAppend(user: string, key: string, value: Uint8Array): Promise<void>;
  stateAppended(user: string, key: string): Promise<Uint8Array[]>;
  stateClearAppended(user: string, key: string): Promise<void>;
  stateDelete(user: string, key: string): Promise<boolean>;
  stateKeys(user: string): Promise<string[]>;

  // --- housekeeping ---

  prune(policy: RetentionPolicy, now: number): Promise<PruneResult>;
  /** Bytes on disk (or held), for /stats and retention. */
  sizeBytes(): Promise<number>;
  /** Flushes what is written behind and closes. Idempotent. */
  close(): Promise<void>;
}
