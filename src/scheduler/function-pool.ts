import type { AbortLike } from "../core/call-abort.js";
import { FennecError, toFennecError } from "../core/errors.js";
import type { InvokeRequest, StartType } from "../core/types.js";
import type { FunctionConfig } from "../config/function-config.js";
import type { Instance, TrackedResponse } from "../sandbox/instance.js";

/** What a dispatch reports back to the scheduler for the invocation record once the head arrived. */
export interface Dispatch {
  readonly instance: Instance;
  readonly startType: StartType;
  readonly queueWaitMs: number;
  readonly initMs: number;
  /** Its body still streams; `ended` says when the invocation is over, with ttfb and exec times. */
  readonly response: TrackedResponse;
}

/** A failed dispatch: the error, and how far the invocation got (for its record), if it ran at all. */
export class DispatchError extends Error {
  constructor(
    readonly error: FennecError,
    readonly partial: (Omit<Dispatch, "response"> & { readonly execMs: number }) | undefined,
  ) {
    super(error.message);
  }
}

interface Waiter {
  readonly request: InvokeRequest;
  /** Aborted when the client goes away. */
  readonly signal: AbortLike | undefined;
  readonly enqueuedAt: number;
  readonly resolve: (d: Dispatch) => void;
  readonly reject: (e: DispatchError) => void;
  timer: NodeJS.Timeout | undefined;
  /** Its queue-timeout passed while a start meant for it was under way: it gets that start's outcome. */
  overdue: boolean;
}

/** What a pool needs from the node: starting an instance within the memory budget. */
export interface PoolHost {
  /** Creates and starts an instance (accounting for memory); throws NO_CAPACITY when it cannot fit. */
  spawn(pool: FunctionPool, origin: StartType): Instance;
  /** Told when an instance became ready. */
  started(pool: FunctionPool, instance: Instance): void;
}

/**
 * The instances of one function and the requests waiting for them. Requests go to the first ready
 * instance with a free slot (packing, as UniFaaS does); otherwise they wait in a bounded FIFO queue
 * with a deadline while new instances start, up to `max-instances`.
 */
export class FunctionPool {
  config: FunctionConfig;
  /** When the config was last read from its source (performance.now()). */
  resolvedAt = 0;
  readonly instances: Instance[] = [];
  readonly #queue: Waiter[] = [];
  readonly #host: PoolHost;
  /** Instances whose first invocation has been handed out (the rest are fresh: cold or pre-booted). */
  readonly #used = new WeakSet<Instance>();
  /** Instances from an older revision of the config: they finish their work and are closed. */
  readonly #retired = new WeakSet<Instance>();
  /** Recorded calls running here (their `request.call`), by call id: the instance each holds. */
  readonly #calls = new Map<string, Instance>();
  /** Calls blocked awaiting a chained call: their slots are lent (see `lend`). */
  readonly #lent = new Set<string>();

  constructor(config: FunctionConfig, host: PoolHost) {
    this.config = config;
    this.#host = host;
  }

  get queueLength(): number {
    return this.#queue.length;
  }

  /** True when a request could be served right now without waiting (the warm fast path). */
  hasFreeSlot(): boolean {
    return this.#queue.length === 0 && this.#freeInstance() !== undefined;
  }

  /**
   * True when a request would not wait behind others for capacity: a slot is free, or no one
   * waits and another instance may start (`max-instances`). The async engine asks before it
   * dispatches, so its calls wait in the durable queue rather than in this one.
   */
  hasRoom(): boolean {
    if (this.#queue.length > 0) return false;
    return this.#freeInstance() !== undefined || this.#countedInstances() < this.config.maxInstances;
  }

  /** Adopts a new revision of the config: instances of the old one take no new work. */
  updateConfig(config: FunctionConfig): void {
    if (config.revision === this.config.revision) {
      this.config = config;
      return;
    }
    this.config = config;
    this.retire();
  }

  /** Every current instance takes no new work, finishes what it has and closes. */
  retire(): void {
    for (const inst of this.instances) {
      this.#retired.add(inst);
      if (inst.active === 0) void inst.close();
    }
  }

  /**
   * Serves one request: now if a slot is free, else after waiting in the queue. Resolves with the
   * response head; the slot stays taken until its body has ended.
   */
  run(request: InvokeRequest, signal?: AbortLike): Promise<Dispatch> {
    return new Promise<Dispatch>((resolve, reject) => {
      const waiter: Waiter = {
        request,
        signal,
        enqueuedAt: performance.now(),
        resolve,
        reject,
        timer: undefined,
        overdue: false,
      };
      if (this.#queue.length === 0) {
        const inst = this.#freeInstance();
        if (inst) return this.#dispatch(waiter, inst);
      }
      if (this.#queue.length >= this.config.maxQueue) {
        return reject(
          new DispatchError(
            new FennecError(
              "QUEUE_FULL",
              `${this.config.key}: ${this.#queue.length} requests already waiting (max-queue ${this.config.maxQueue})`,
            ),
            undefined,
          ),
        );
      }
      waiter.timer = setTimeout(() => this.#expire(waiter), this.config.queueTimeoutMs);
      this.#queue.push(waiter);
      // A client that leaves while it waits gives up its place.
      signal?.addEventListener(
        "abort",
        () => {
          const i = this.#queue.indexOf(waiter);
          if (i < 0) return;
          this.#queue.splice(i, 1);
          clearTimeout(waiter.timer);
          const gone = new FennecError(
            "CLIENT_GONE",
            `${this.config.key}: the client went away while queued`,
          );
          reject(new DispatchError(gone, undefined));
        },
        { once: true },
      );
      this.pump();
    });
  }

  /**
   * A waiter's queue-timeout passed. `queue-timeout` bounds the wait for capacity; a waiter that
   * a start already under way is meant for (the first waiters, as many as the starting instances
   * have slots) waits for that start instead, which has its own deadline (`FN_INIT_TIMEOUT`): it
   * gets the instance, or the start's own error, never a QUEUE_TIMEOUT that hides the cause.
   */
  #expire(waiter: Waiter): void {
    const i = this.#queue.indexOf(waiter);
    if (i < 0) return;
    if (i < this.#coming()) {
      waiter.overdue = true;
      return;
    }
    this.#queue.splice(i, 1);
    waiter.reject(new DispatchError(this.#queueTimeout(), undefined));
  }

  #queueTimeout(): FennecError {
    return new FennecError(
      "QUEUE_TIMEOUT",
      `${this.config.key}: no instance became free within ${this.config.queueTimeoutMs} ms`,
    );
  }

  /** How many queued requests the instances now starting will take (from the front of the queue). */
  /** How many waiting calls one instance can take: its concurrent slots, or one when single-use. */
  #slotsPerInstance(): number {
    return this.config.singleUse ? 1 : this.config.concurrentRequests;
  }

  #coming(): number {
    const perInstance = this.#slotsPerInstance();
    return this.instances.filter((i) => i.state === "starting" && !this.#retired.has(i)).length * perInstance;
  }

  /** Starts instances ahead of demand (thesis pre-boot, min-instances); resolves with how many became ready. */
  async preBoot(count: number): Promise<{ started: number; errors: FennecError[] }> {
    const starts: Promise<void>[] = [];
    const errors: FennecError[] = [];
    for (let i = 0; i < count && this.#liveCount() < this.config.maxInstances; i++) {
      try {
        starts.push(this.#startInstance("prebooted"));
      } catch (err) {
        errors.push(toFennecError(err));
        break;
      }
    }
    const results = await Promise.allSettled(starts);
    for (const r of results) if (r.status === "rejected") errors.push(toFennecError(r.reason));
    return { started: results.filter((r) => r.status === "fulfilled").length, errors };
  }

  /** Hands free slots to waiters, then starts instances for the waiters no slot or start covers. */
  pump(): void {
    while (this.#queue.length > 0) {
      const inst = this.#freeInstance();
      if (!inst) break;
      this.#dispatch(this.#queue.shift()!, inst);
    }
    if (this.#queue.length === 0) return;
    const perInstance = this.#slotsPerInstance();
    let coming = this.#coming();
    while (this.#queue.length > coming && this.#countedInstances() < this.config.maxInstances) {
      try {
        void this.#startInstance("cold").catch(() => undefined);
      } catch (err) {
        // Nothing will free a slot when every live instance is held by awaiting callers.
        if (this.#countedInstances() === 0) this.#rejectAll(toFennecError(err));
        return;
      }
      coming += perInstance;
    }
    // Overdue waiters that no start covers any more (theirs was replaced, none can be added) time out now.
    for (let i = this.#queue.length - 1; i >= coming; i--) {
      const waiter = this.#queue[i]!;
      if (!waiter.overdue) continue;
      this.#queue.splice(i, 1);
      waiter.reject(new DispatchError(this.#queueTimeout(), undefined));
    }
  }

  #startInstance(origin: StartType): Promise<void> {
    const inst = this.#host.spawn(this, origin);
    this.instances.push(inst);
    inst.onStopped(() => {
      const i = this.instances.indexOf(inst);
      if (i >= 0) this.instances.splice(i, 1);
      // The waiters this start was meant to serve get its error: no retry loop on a broken
      // function, and no one held to their deadline for an instance that will never come.
      if (inst.failure && inst.initMs === 0) {
        this.#reject(this.#slotsPerInstance(), inst.failure);
      }
      this.pump();
    });
    return inst.start().then(() => {
      this.#host.started(this, inst);
      this.pump();
    });
  }

  #dispatch(waiter: Waiter, inst: Instance): void {
    clearTimeout(waiter.timer);
    const fresh = !this.#used.has(inst);
    this.#used.add(inst);
    const startType: StartType = fresh ? inst.origin : "warm";
    const initMs = fresh && (inst.origin === "cold" || inst.origin === "restored") ? inst.initMs : 0;
    const began = performance.now();
    const queueWaitMs = began - waiter.enqueuedAt;
    const callId = waiter.request.call?.callId;
    if (callId !== undefined) this.#calls.set(callId, inst);
    const answered = (response: TrackedResponse) => {
      // The slot is free once the body has ended (or was cut), not when the head arrives.
      void response.ended.then(() => this.#release(inst, callId));
      waiter.resolve({ instance: inst, startType, queueWaitMs, initMs, response });
    };
    const failed = (err: unknown) => {
      this.#release(inst, callId);
      const partial = { instance: inst, startType, queueWaitMs, initMs, execMs: performance.now() - began };
      waiter.reject(new DispatchError(toFennecError(err), partial));
    };
    // run() counts the slot synchronously, before any other request can look at this instance;
    // a call it answered at once (a wasm call on this thread) is handed on without a promise.
    let response: TrackedResponse | Promise<TrackedResponse>;
    try {
      response = inst.run(waiter.request, waiter.signal);
    } catch (err) {
      // Answered a turn later, as a rejection was: pump() dispatches queued calls in a loop, and
      // a failure handled here would release and pump again from inside it, once per waiter.
      return queueMicrotask(() => failed(err));
    }
    if (response instanceof Promise) response.then(answered, failed);
    else answered(response);
  }

  #release(inst: Instance, callId: string | undefined): void {
    if (callId !== undefined) {
      this.#calls.delete(callId);
      this.#lent.delete(callId);
    }
    if (this.config.singleUse || this.#retired.has(inst)) {
      if (inst.active === 0) void inst.close();
    }
    this.pump();
  }

  #freeInstance(): Instance | undefined {
    const limit = this.config.concurrentRequests;
    for (const inst of this.instances) {
      if (inst.state !== "ready" && inst.state !== "busy") continue;
      if (this.#retired.has(inst)) continue;
      if (this.config.singleUse ? this.#used.has(inst) : inst.active >= limit) continue;
      return inst;
    }
    return undefined;
  }

  #liveCount(): number {
    let n = 0;
    for (const inst of this.instances) if (inst.isLive && !this.#retired.has(inst)) n++;
    return n;
  }

  /**
   * The instances counted against `max-instances`: the live ones but those whose every slot is
   * lent (all their calls await chained calls). Without that, a caller awaiting a child of its
   * own function at max-instances would wait for a slot it holds itself (Faasm's open deadlock).
   * What bounds the extra instances is the node's memory budget (the scheduler's `spawn`).
   */
  #countedInstances(): number {
    if (this.#lent.size === 0) return this.#liveCount();
    const lentOn = new Map<Instance, number>();
    for (const callId of this.#lent) {
      const inst = this.#calls.get(callId)!;
      lentOn.set(inst, (lentOn.get(inst) ?? 0) + 1);
    }
    let n = 0;
    for (const inst of this.instances) {
      if (!inst.isLive || this.#retired.has(inst)) continue;
      if ((lentOn.get(inst) ?? 0) >= Math.max(1, inst.active)) continue;
      n++;
    }
    return n;
  }

  /**
   * Lends the slot of recorded call `callId` while it awaits a chained call: it stops counting
   * against `max-instances` (see `#countedInstances`). Returns the function that takes it back,
   * or undefined when the call does not run in this pool. The slot itself stays taken (the caller
   * resumes on its instance), so a child never shares an instance a blocked caller is in.
   */
  lend(callId: string): (() => void) | undefined {
    if (!this.#calls.has(callId)) return undefined;
    this.#lent.add(callId);
    this.pump();
    return () => {
      this.#lent.delete(callId);
    };
  }

  /** Calls of this pool awaiting chained calls (their slots lent). */
  get awaiting(): number {
    return this.#lent.size;
  }

  /**
   * Whether a call could be placed now or once calls running here end: a free slot, a start
   * under way, a running call that is not awaiting (it will end), or room under `max-instances`
   * when `fits` says the memory budget has room for another instance.
   */
  canPlace(fits: () => boolean): boolean {
    if (this.#freeInstance() || this.#coming() > this.#queue.length) return true;
    for (const [callId, inst] of this.#calls) if (!this.#lent.has(callId) && inst.isLive) return true;
    return this.#countedInstances() < this.config.maxInstances && fits();
  }

  #rejectAll(error: FennecError): void {
    this.#reject(this.#queue.length, error);
  }

  #reject(count: number, error: FennecError): void {
    for (const waiter of this.#queue.splice(0, count)) {
      clearTimeout(waiter.timer);
      waiter.reject(new DispatchError(error, undefined));
    }
  }

  /** Instances idle past keepalive, beyond the min-instances floor (scale to zero). */
  expired(now: number): Instance[] {
    const idle = this.instances.filter(
      (i) => i.state === "ready" && i.active === 0 && now - i.lastUsed >= this.config.keepaliveMs,
    );
    const keep = Math.max(0, this.config.minInstances - (this.#liveCount() - idle.length));
    return idle.slice(keep);
  }

  /** How many instances are missing below min-instances. */
  missing(): number {
    return Math.max(0, this.config.minInstances - this.#liveCount());
  }

  /** Rejects everything still queued (shutdown). */
  abandon(error: FennecError): void {
    this.#rejectAll(error);
  }

  /**
   * What the cluster's placement needs of this pool (membership.ts): instances up that take work
   * (retiring ones do not), the calls they could take at once without a start, and the calls
   * running in any instance.
   */
  load(): { warm: number; freeSlots: number; active: number } {
    let warm = 0;
    let freeSlots = 0;
    let active = 0;
    for (const inst of this.instances) {
      active += inst.active;
      if (inst.state !== "ready" && inst.state !== "busy") continue;
      if (this.#retired.has(inst)) continue;
      warm++;
      if (this.config.singleUse) freeSlots += this.#used.has(inst) ? 0 : 1;
      else freeSlots += Math.max(0, this.config.concurrentRequests - inst.active);
    }
    return { warm, freeSlots, active };
  }

  counts(): Record<"starting" | "ready" | "busy" | "stopping", number> {
    const c = { starting: 0, ready: 0, busy: 0, stopping: 0 };
    for (const inst of this.instances) if (inst.state in c) c[inst.state as keyof typeof c]++;
    return c;
  }
}
