import { bodyOf, readBody } from "../core/body.js";
import type { CallHost } from "../core/call-host.js";
import { FennecError, toFennecError } from "../core/errors.js";
import { publishAsyncCall, subscribeNode } from "../core/events.js";
import type { Logger } from "../core/log.js";
import type { FunctionId, InvocationRecord, InvokeRequest } from "../core/types.js";
import { DEFAULT_ASYNC, type AsyncConfig, type FunctionConfig } from "../config/function-config.js";
import type { Scheduler } from "../scheduler/scheduler.js";
import type {
  CallRecord,
  InvocationStore,
  LeasedCall,
  StoredRequest,
  StoredResponse,
} from "../store/contract.js";
import type { Callbacks } from "./callbacks.js";
import { decide, expired, type AttemptOutcome, type Verdict } from "./retry-policy.js";

export interface AsyncEngineOptions {
  readonly store: InvocationStore;
  /**
   * The identity calls are leased under: the scheduler's node on its own; in a cluster the node's
   * incarnation (membership's), so the others can give its calls back when it leaves.
   */
  readonly node: string;
  readonly scheduler: Scheduler;
  readonly log: Logger;
  /** Largest response body a result keeps; a larger one fails the attempt with FN_RESPONSE_TOO_LARGE. */
  readonly resultLimitBytes: number;
  readonly callbacks?: Callbacks | undefined;
  /** The HTTP status of an error code, for a callback that reports a failure. */
  readonly statusOf: (code: FennecError["code"]) => number;
  /** What a running call may ask of Fennec (chain, await, state), when chaining is wired. */
  readonly callHost?: ((record: CallRecord, request: StoredRequest) => CallHost | undefined) | undefined;
  /** How long a lease lasts before it must be extended (default 30 s; extended every third of it). */
  readonly leaseMs?: number;
  /**
   * How often the queue is looked at without being told (default 5 s): for calls another party
   * enqueued without waking the engine, and for backoffs set before a restart that the start-up
   * scan did not see. Everything this engine does itself wakes it at once.
   */
  readonly sweepMs?: number;
  /** Async calls running at once on this node, all functions together (default 256). */
  readonly maxRunning?: number;
  /**
   * Other nodes take calls from the same store (a cluster): a call whose function's sandbox kind
   * has no driver here is given back unrun, its attempt not spent, for a node that has one, and
   * this node stops taking that function's calls for a while. Alone, such a call fails
   * (DRIVER_UNAVAILABLE), as a sync call would.
   */
  readonly shared?: boolean;
}

/** How long a node leaves a function it has no driver for to the others before looking again. */
const UNRUNNABLE_MS = 30_000;

/** Calls leased in one store transaction at most. */
const TAKE_BATCH = 16;

/** `user/name` back into its parts (names never contain `/`). */
function functionIdOf(key: string): FunctionId {
  const slash = key.indexOf("/");
  return { user: key.slice(0, slash), name: key.slice(slash + 1) };
}

/** How many async calls of a function may run at once: its instances' slots, or less. */
function capacityOf(config: FunctionConfig): number {
  const slots = config.maxInstances * (config.singleUse ? 1 : config.concurrentRequests);
  return Math.min(slots, config.async.concurrency ?? slots);
}

/**
 * The dispatcher of durable async calls. It takes due calls from the store (never more of a
 * function than its instances can serve at once, and none of a function whose pool has no room:
 * async calls wait in the durable queue, not in the scheduler's queue with its deadline), runs
 * each through `Scheduler.invoke` under a lease it keeps extending, reads the result whole
 * (bounded), and finishes, retries or dead-letters it by the retry rule (`retry-policy.ts`). It is
 * woken by enqueues, by its own calls ending, by invocations ending while a function has no room,
 * and by timers for backoffs; a slow sweep covers the rest.
 */
export class AsyncEngine {
  readonly #o: AsyncEngineOptions;
  /** The store's name for this node (leases). */
  readonly #node: string;
  /** The scheduler's, on its events. */
  readonly #events: string;
  readonly #leaseMs: number;
  readonly #maxRunning: number;
  readonly #running = new Set<Promise<void>>();
  /** Calls of each function running now. */
  readonly #perFunction = new Map<string, number>();
  /** Each function's async capacity, learnt from its config when one of its calls runs. */
  readonly #capacity = new Map<string, number>();
  /** Shared store: functions this node has no driver for, until when it leaves them to others. */
  readonly #unrunnable = new Map<string, number>();
  /** Backoff ends still to wake for, ascending. */
  readonly #due: number[] = [];
  #dueTimer: NodeJS.Timeout | undefined;
  #sweep: NodeJS.Timeout | undefined;
  #unsubscribe: (() => void) | undefined;
  /** A function was skipped because its pool had no room: invocations ending may free some. */
  #blocked = false;
  #blockedWake: NodeJS.Timeout | undefined;
  #pumping = false;
  #again = false;
  #stopped = false;

  constructor(options: AsyncEngineOptions) {
    this.#o = options;
    this.#node = options.node;
    this.#events = options.scheduler.node;
    this.#leaseMs = options.leaseMs ?? 30_000;
    this.#maxRunning = options.maxRunning ?? 256;
  }

  /**
   * Starts taking calls. (What a dead Fennec was running is queued again before this, by the
   * composition root, when it owns the store alone: `requeueOrphans`.)
   */
  async start(): Promise<void> {
    const { store } = this.#o;
    // Backoffs set before a restart: wake when they end.
    const now = Date.now();
    for (const r of await store.list({ state: "queued", kind: "async", limit: 1000 }))
      if (r.notBefore !== undefined && r.notBefore > now) this.#wakeAt(r.notBefore);
    this.#unsubscribe = subscribeNode(this.#events, {
      invocation: () => this.#onCapacity(),
      ready: () => this.#onCapacity(),
    });
    this.#sweep = setInterval(() => this.wake(), this.#o.sweepMs ?? 5000);
    this.#sweep.unref();
    this.wake();
  }

  /** Looks for due calls now (after an enqueue or a replay). */
  wake(): void {
    if (this.#stopped) return;
    if (this.#pumping) {
      this.#again = true;
      return;
    }
    this.#pumping = true;
    void this.#pump()
      .catch((err: unknown) =>
        this.#o.log.error("async engine: taking calls failed", { error: toFennecError(err).message }),
      )
      .finally(() => {
        this.#pumping = false;
        if (this.#again) {
          this.#again = false;
          this.wake();
        }
      });
  }

  /** An invocation ended or an instance became ready: a blocked function may have room now. */
  #onCapacity(): void {
    if (!this.#blocked || this.#blockedWake) return;
    // At most one look per 50 ms however many sync calls end meanwhile.
    this.#blockedWake = setTimeout(() => {
      this.#blockedWake = undefined;
      this.wake();
    }, 50);
  }

  async #pump(): Promise<void> {
    const { store, scheduler } = this.#o;
    while (!this.#stopped && this.#running.size < this.#maxRunning) {
      // Capacities from the configs the pools run under, so a batch is not cut to one call of a
      // function whose first call has not read its config yet.
      for (const [key, pool] of scheduler.pools()) this.#capacity.set(key, capacityOf(pool.config));
      const skip = new Set<string>();
      const now = Date.now();
      for (const [key, until] of this.#unrunnable)
        if (until > now) skip.add(key);
        else this.#unrunnable.delete(key);
      // A call blocked awaiting a chained call lends its place (Scheduler.lend): not counted.
      for (const [key, n] of this.#perFunction)
        if (n - scheduler.awaiting(key) >= (this.#capacity.get(key) ?? 1)) skip.add(key);
      let blocked = false;
      for (const key of scheduler.pools().keys()) {
        if (skip.has(key) || scheduler.hasRoomFor(key)) continue;
        skip.add(key);
        blocked = true;
      }
      this.#blocked = blocked;
      // A batch per durable write: one lease transaction (and its fsync) for up to TAKE_BATCH calls.
      const max = Math.min(TAKE_BATCH, this.#maxRunning - this.#running.size);
      const calls = await store.take({
        node: this.#node,
        max,
        leaseMs: this.#leaseMs,
        now: Date.now(),
        skip,
      });
      for (const call of calls) {
        const key = call.record.function;
        // The batch may hold more of one function than it has room for: those go back at once.
        // Calls awaiting a chained call lend their places (Scheduler.lend), as in the skip set.
        const taken = (this.#perFunction.get(key) ?? 0) - scheduler.awaiting(key);
        if (this.#stopped || taken >= (this.#capacity.get(key) ?? 1)) this.#putBack(call);
        else this.#launch(call);
      }
      if (calls.length < max) return;
    }
  }

  /** Returns a call taken beyond its function's room, unrun: queued and due, its attempt given back. */
  #putBack({ record }: LeasedCall): void {
    // Tracked with the running calls, so the store is not closed under it.
    const work: Promise<void> = this.#o.store
      .retry(record.id, this.#node, Date.now(), { attempt: record.attempt - 1 })
      .catch((err: unknown) =>
        this.#o.log.warn("async call could not be put back; its lease returns it", {
          callId: record.id,
          error: toFennecError(err).message,
        }),
      )
      .finally(() => this.#running.delete(work));
    this.#running.add(work);
  }

  #launch(call: LeasedCall): void {
    const key = call.record.function;
    this.#perFunction.set(key, (this.#perFunction.get(key) ?? 0) + 1);
    const work = this.#run(call)
      .catch((err: unknown) =>
        this.#o.log.error("async call could not be settled", {
          callId: call.record.id,
          error: toFennecError(err).message,
        }),
      )
      .finally(() => {
        this.#running.delete(work);
        const left = (this.#perFunction.get(key) ?? 1) - 1;
        if (left > 0) this.#perFunction.set(key, left);
        else this.#perFunction.delete(key);
        this.wake();
      });
    this.#running.add(work);
  }

  async #run({ record, request }: LeasedCall): Promise<void> {
    const { scheduler, store } = this.#o;
    const key = record.function;
    const id = functionIdOf(key);
    let async: AsyncConfig = DEFAULT_ASYNC;
    try {
      const config = await scheduler.configOf(id);
      async = config.async;
      const capacity = capacityOf(config);
      const known = this.#capacity.get(key);
      this.#capacity.set(key, capacity);
      // Learnt (or grown): more of its calls may run now, not only when this one ends.
      if (known === undefined || capacity > known) this.wake();
    } catch (err) {
      // No config: the attempt fails as a sync call would (FUNCTION_NOT_FOUND, FN_CONFIG_INVALID).
      return this.#settle(record, async, { error: toFennecError(err) }, undefined, undefined);
    }
    const old = expired(async, key, record.submittedAt, Date.now());
    if (old) return this.#apply(record, { kind: "bury", error: old }, {}, undefined);
    if (this.#o.shared) {
      try {
        scheduler.driverFor(await scheduler.configOf(id));
      } catch (err) {
        const e = toFennecError(err);
        if (e.code !== "DRIVER_UNAVAILABLE") throw err;
        // Another node may have the driver: back to the queue unrun, and not taken here again soon.
        this.#unrunnable.set(key, Date.now() + UNRUNNABLE_MS);
        return this.#apply(record, { kind: "requeue", notBefore: Date.now(), error: e }, {}, undefined);
      }
    }
    if ((this.#perFunction.get(key) ?? 0) - scheduler.awaiting(key) > (this.#capacity.get(key) ?? 1)) {
      // Taken before its capacity was known (or the config shrank it): back, no attempt spent.
      const busy = new FennecError("QUEUE_FULL", `${key}: every slot for async calls is taken`);
      return this.#apply(record, { kind: "requeue", notBefore: Date.now(), error: busy }, {}, undefined);
    }

    const lease = setInterval(() => {
      store.extendLease(record.id, this.#node, this.#leaseMs, Date.now()).then(
        (mine) => {
          if (!mine) this.#o.log.warn("async call's lease was lost while it ran", { callId: record.id });
        },
        (err: unknown) =>
          this.#o.log.warn("async call's lease could not be extended", {
            callId: record.id,
            error: toFennecError(err).message,
          }),
      );
    }, this.#leaseMs / 3);
    try {
      const invokeRequest: InvokeRequest = {
        method: request.method,
        path: request.path,
        query: request.query,
        headers: { ...request.headers, "x-call-id": record.id },
        body: bodyOf(request.body),
        call: this.#o.callHost?.(record, request),
      };
      const outcome = await scheduler.invoke(id, invokeRequest);
      if ("error" in outcome) return await this.#settle(record, async, outcome, outcome.record, undefined);
      const limit = this.#o.resultLimitBytes;
      let body: Buffer;
      try {
        body = await readBody(
          outcome.response.body,
          limit,
          () =>
            new FennecError(
              "FN_RESPONSE_TOO_LARGE",
              `${key}: the response is larger than the ${limit} bytes an asynchronous result may hold`,
            ),
        );
      } catch (err) {
        return await this.#settle(
          record,
          async,
          { error: toFennecError(err, "FN_CRASHED") },
          await outcome.record,
          undefined,
        );
      }
      const { status, headers } = outcome.response;
      await this.#settle(record, async, { status }, await outcome.record, { status, headers, body });
    } finally {
      clearInterval(lease);
    }
  }

  /** Decides what an attempt's outcome means for the call, and does it. */
  #settle(
    record: CallRecord,
    async: AsyncConfig,
    outcome: AttemptOutcome,
    invocation: InvocationRecord | undefined,
    response: StoredResponse | undefined,
  ): Promise<void> {
    let verdict: Verdict = decide(
      async,
      { key: record.function, attempt: record.attempt, submittedAt: record.submittedAt },
      outcome,
      Date.now(),
    );
    // A chained call is not retried (Faasm's semantics): its caller awaits it and decides. A
    // retry would run the subtree it chains again, so the retries of a chain would multiply.
    if (record.parentId !== undefined && (verdict.kind === "retry" || verdict.kind === "bury"))
      verdict = { kind: "finish", state: "failed" };
    // Stopping: a call cut short (its instance destroyed at the end of the drain) goes back whole.
    if (this.#stopped && "error" in outcome && verdict.kind !== "finish")
      verdict = { kind: "requeue", notBefore: Date.now(), error: outcome.error };
    const figures: Partial<CallRecord> = invocation
      ? {
          startType: invocation.startType,
          // The wait in the durable queue (from the lease) plus any in the function's pool.
          queueWaitMs: (record.queueWaitMs ?? 0) + invocation.queueWaitMs,
          initMs: invocation.initMs,
          ttfbMs: invocation.ttfbMs,
          execMs: invocation.execMs,
          status: invocation.status > 0 ? invocation.status : undefined,
        }
      : {};
    if ("error" in outcome)
      Object.assign(figures, { errorCode: outcome.error.code, errorMessage: outcome.error.message });
    return this.#apply(
      record,
      verdict,
      figures,
      verdict.kind === "finish" && verdict.state === "succeeded" ? response : undefined,
    );
  }

  async #apply(
    record: CallRecord,
    verdict: Verdict,
    figures: Partial<CallRecord>,
    response: StoredResponse | undefined,
  ): Promise<void> {
    const { store, log } = this.#o;
    const id = record.id;
    const event = { node: this.#events, function: record.function, callId: id };
    try {
      switch (verdict.kind) {
        case "finish":
          await store.finish(id, this.#node, { state: verdict.state, response, figures });
          break;
        case "retry":
          await store.retry(id, this.#node, verdict.notBefore, {
            ...figures,
            errorCode: verdict.error.code,
            errorMessage: verdict.error.message,
          });
          this.#wakeAt(verdict.notBefore);
          publishAsyncCall({ ...event, kind: "retry" });
          log.debug("async call failed; retried later", {
            callId: id,
            attempt: record.attempt,
            error: verdict.error.code,
            inMs: verdict.notBefore - Date.now(),
          });
          return;
        case "requeue":
          // The attempt the lease counted is given back: the platform failed it, not the function.
          await store.retry(id, this.#node, verdict.notBefore, {
            ...figures,
            attempt: record.attempt - 1,
            errorCode: verdict.error.code,
            errorMessage: verdict.error.message,
          });
          this.#wakeAt(verdict.notBefore);
          publishAsyncCall({ ...event, kind: "requeue" });
          return;
        case "bury":
          await store.bury(id, this.#node, {
            ...figures,
            errorCode: verdict.error.code,
            errorMessage: verdict.error.message,
          });
          publishAsyncCall({ ...event, kind: "dead" });
          log.warn("async call dead-lettered", {
            callId: id,
            function: record.function,
            attempt: record.attempt,
            error: verdict.error.code,
          });
          break;
      }
    } catch (err) {
      // The lease was lost (another node took it after it ran out) or the store failed: the call
      // stays where the store has it, and runs again if it is still queued (at-least-once).
      log.warn("async call's outcome could not be stored", { callId: id, error: toFennecError(err).message });
      return;
    }
    this.#callBack(record, verdict, figures, response);
  }

  #callBack(
    record: CallRecord,
    verdict: Verdict,
    figures: Partial<CallRecord>,
    response: StoredResponse | undefined,
  ): void {
    if (verdict.kind !== "finish" && verdict.kind !== "bury") return;
    const error = verdict.kind === "bury" ? verdict.error : undefined;
    this.#deliver(
      {
        ...record,
        ...figures,
        state: verdict.kind === "bury" ? "dead" : verdict.state,
        errorCode: error?.code ?? figures.errorCode,
        errorMessage: error?.message ?? figures.errorMessage,
      },
      response,
    );
  }

  /**
   * POSTs an ended call's result to its callback URL, then records in the store how the delivery
   * ended (the store made it `pending` when the call ended). One cut by Fennec stopping stays
   * pending, for `resumeCallbacks` at the next start.
   */
  #deliver(ended: CallRecord, response: StoredResponse | undefined): void {
    const callbacks = this.#o.callbacks;
    if (!callbacks || ended.callbackUrl === undefined) return;
    const base = {
      url: ended.callbackUrl,
      callId: ended.id,
      function: ended.function,
      durationMs: ended.execMs ?? 0,
    };
    let sent;
    if (ended.state === "succeeded" && response) {
      const type = response.headers.find(([name]) => name.toLowerCase() === "content-type")?.[1];
      sent = callbacks.send({
        ...base,
        status: response.status,
        contentType: type,
        body: response.body,
        state: "succeeded",
        errorCode: undefined,
      });
    } else {
      const code = ended.errorCode ?? "INTERNAL";
      const message = ended.errorMessage ?? "";
      const state = ended.state === "dead" ? "dead" : "failed";
      const status = this.#o.statusOf(code as FennecError["code"]);
      const body = Buffer.from(JSON.stringify({ error: { code, message, callId: ended.id } }));
      sent = callbacks.send({
        ...base,
        status,
        contentType: "application/json",
        body,
        state,
        errorCode: code,
      });
    }
    void sent.then(async (outcome) => {
      if (outcome === "dropped") return;
      try {
        await this.#o.store.callbackEnded(ended.id, outcome);
      } catch (err) {
        // Still pending in the store: sent again at the next start (callbacks are at-least-once).
        this.#o.log.warn("callback outcome could not be stored", {
          callId: ended.id,
          error: toFennecError(err).message,
        });
      }
    });
  }

  /**
   * Sends again the callbacks still pending in the store: those a Fennec that stopped or died had
   * not delivered yet. Run once at start, by a node that owns the store alone (as requeueOrphans).
   * Returns how many.
   */
  async resumeCallbacks(): Promise<number> {
    if (!this.#o.callbacks) return 0;
    const { store } = this.#o;
    const pending = await store.pendingCallbacks(1000);
    for (const ended of pending)
      this.#deliver(ended, ended.state === "succeeded" ? await store.response(ended.id) : undefined);
    return pending.length;
  }

  /**
   * Takes over the async work of `holder`, the lease identity of a node gone from the cluster
   * (membership says it left; `cluster/takeover.ts`): its running calls go back to the queue at
   * once, without waiting for their leases, and run here or on any node; the callbacks it had not
   * delivered become this node's and are sent. Several nodes may do it at once: each call and
   * each callback moves once (compare-and-set). Returns how many of each.
   */
  async takeOver(holder: string): Promise<{ calls: number; callbacks: number }> {
    const { store } = this.#o;
    const calls = await store.requeueRunning(holder);
    if (calls > 0) this.wake();
    let callbacks = 0;
    if (this.#o.callbacks)
      for (;;) {
        const taken = await store.takeCallbacks(holder, this.#node, 1000);
        for (const ended of taken)
          this.#deliver(ended, ended.state === "succeeded" ? await store.response(ended.id) : undefined);
        callbacks += taken.length;
        if (taken.length < 1000) break;
      }
    return { calls, callbacks };
  }

  /** Wakes at `time` (a backoff's end); times are kept in order, one timer for the next. */
  #wakeAt(time: number): void {
    if (this.#stopped) return;
    let i = this.#due.length;
    while (i > 0 && this.#due[i - 1]! > time) i--;
    this.#due.splice(i, 0, time);
    if (i === 0) this.#armDue();
  }

  #armDue(): void {
    clearTimeout(this.#dueTimer);
    const next = this.#due[0];
    if (next === undefined || this.#stopped) return;
    this.#dueTimer = setTimeout(
      () => {
        const now = Date.now();
        while (this.#due.length > 0 && this.#due[0]! <= now) this.#due.shift();
        this.#armDue();
        this.wake();
      },
      Math.max(0, next - Date.now()),
    );
    this.#dueTimer.unref();
  }

  /** Stops taking calls; those running go on (the scheduler's drain bounds them). Idempotent. */
  stop(): void {
    this.#stopped = true;
    clearInterval(this.#sweep);
    clearTimeout(this.#dueTimer);
    clearTimeout(this.#blockedWake);
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
  }

  /** Resolves once every call that was running has been finished, retried or put back. */
  async drained(): Promise<void> {
    while (this.#running.size > 0) await Promise.allSettled([...this.#running]);
  }

  /** Async calls running now, by function. */
  runningByFunction(): ReadonlyMap<string, number> {
    return this.#perFunction;
  }
}
