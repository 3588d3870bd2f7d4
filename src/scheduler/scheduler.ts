import type { AbortLike } from "../core/call-abort.js";
import { randomUUID } from "node:crypto";
import { FennecError, toFennecError } from "../core/errors.js";
import { publishInvocation } from "../core/events.js";
import type { Logger } from "../core/log.js";
import {
  functionKey,
  type FunctionId,
  type InvocationRecord,
  type InvokeRequest,
  type InvokeResponse,
  type StartType,
} from "../core/types.js";
import type { FunctionConfig } from "../config/function-config.js";
import type { SandboxDriver } from "../sandbox/contract.js";
import { Instance } from "../sandbox/instance.js";
import type { ReadinessHub } from "../sandbox/readiness.js";
import { DispatchError, FunctionPool, type PoolHost } from "./function-pool.js";

/** Edits on disk are seen by new instances within this long. */
const RESOLVE_INTERVAL_MS = 250;

/** Where configs come from: the directory registry in production, anything in tests. */
export interface ConfigSource {
  resolve(id: FunctionId): Promise<FunctionConfig>;
}

export interface SchedulerOptions {
  readonly configs: ConfigSource;
  /** Sandbox kind (`wasm`, `vm`, ...) -> driver. */
  readonly drivers: ReadonlyMap<string, SandboxDriver>;
  /** How to turn on a kind that has no driver here (`start Fennec with --process to enable it`). */
  readonly enableHint?: (kind: string) => string | undefined;
  readonly hub: ReadinessHub;
  /** Base of the readiness callback URL, ending in `/ready/` (known once the gateway listens). */
  readonly callbackBase: () => string;
  /** Node-wide memory budget in MiB (SnapFaaS `--mem`). */
  readonly memoryBudgetMiB: number;
  readonly startTimeoutMs: number;
  readonly log: Logger;
  /** How often keepalive and min-instances are enforced. */
  readonly reapIntervalMs?: number;
  /** Told whenever an instance of function `key` has stopped (the registry frees retired directories). */
  readonly onInstanceStopped?: () => void;
}

/** What is known of an invocation when its response head arrives. */
export type InvocationStart = Pick<
  InvocationRecord,
  "node" | "function" | "instanceId" | "startType" | "queueWaitMs" | "initMs"
>;

export interface InvokeOutcome {
  /** Its body streams: read it to the end or destroy it, or the instance's slot stays taken. */
  readonly response: InvokeResponse;
  readonly start: InvocationStart;
  /** The invocation's record, published when the body has ended or was cut (never rejects). */
  readonly record: Promise<InvocationRecord>;
}

/**
 * One scheduling model for every sandbox: per-function pools, a node memory budget with
 * least-recently-used eviction of idle instances of other functions, keepalive (scale to zero),
 * min-instances, pre-boot, and a record for every invocation.
 */
export class Scheduler implements PoolHost {
  /** Tells this scheduler's events from those of another in the same process. */
  readonly node = randomUUID();
  readonly #opts: SchedulerOptions;
  readonly #pools = new Map<string, FunctionPool>();
  readonly #reserved = new Map<Instance, number>();
  /** Every instance not yet stopped, in a pool or not (a deleted function's instances still drain). */
  readonly #live = new Set<Instance>();
  /** The last function-caused start failure per function, shown by the admin API until a start succeeds. */
  readonly #errors = new Map<string, FennecError>();
  #usedMiB = 0;
  #closing = false;
  #inFlight = 0;
  /** A re-check of the configs of pools with instances is under way (they never overlap). */
  #rechecking = false;
  readonly #reaper: NodeJS.Timeout;

  constructor(opts: SchedulerOptions) {
    this.#opts = opts;
    this.#reaper = setInterval(() => this.#reap(), opts.reapIntervalMs ?? 250);
    this.#reaper.unref();
  }

  get memoryUsedMiB(): number {
    return this.#usedMiB;
  }

  get memoryBudgetMiB(): number {
    return this.#opts.memoryBudgetMiB;
  }

  /**
   * Invokes a function; never throws: failures before the response head come back as an error
   * plus record. Aborting `signal` (the client went away) cancels the invocation.
   */
  async invoke(
    id: FunctionId,
    request: InvokeRequest,
    signal?: AbortLike,
  ): Promise<InvokeOutcome | { error: FennecError; record: InvocationRecord }> {
    const key = functionKey(id);
    const fail = (error: FennecError, partial?: DispatchError["partial"]) => {
      const record: InvocationRecord = {
        node: this.node,
        function: key,
        instanceId: partial?.instance.id,
        startType: partial?.startType,
        queueWaitMs: partial?.queueWaitMs ?? 0,
        initMs: partial?.initMs ?? 0,
        ttfbMs: partial?.execMs ?? 0,
        execMs: partial?.execMs ?? 0,
        status: 0,
        errorCode: error.code,
      };
      publishInvocation(record);
      return { error, record };
    };
    if (this.#closing) {
      request.body.destroy();
      return fail(new FennecError("SHUTTING_DOWN", "Fennec is shutting down"));
    }
    // In flight until the response body ends: close() waits for streams to finish.
    this.#inFlight++;
    let streaming = false;
    try {
      const pool = this.#warmPool(key) ?? (await this.#poolFor(id));
      const d = await pool.run(request, signal);
      const start: InvocationStart = {
        node: this.node,
        function: key,
        instanceId: d.instance.id,
        startType: d.startType,
        queueWaitMs: d.queueWaitMs,
        initMs: d.initMs,
      };
      const { status } = d.response;
      const record = d.response.ended.then((end) => {
        this.#inFlight--;
        const { ttfbMs, execMs, error } = end;
        // Written out, not spread: this runs once per call.
        const r: InvocationRecord = {
          node: start.node,
          function: start.function,
          instanceId: start.instanceId,
          startType: start.startType,
          queueWaitMs: start.queueWaitMs,
          initMs: start.initMs,
          ttfbMs,
          execMs,
          status,
          errorCode: error?.code,
          errorMessage: error?.message,
        };
        publishInvocation(r);
        return r;
      });
      streaming = true;
      return { response: d.response, start, record };
    } catch (err) {
      if (!request.body.readableEnded) request.body.destroy();
      if (err instanceof DispatchError) return fail(err.error, err.partial);
      return fail(toFennecError(err));
    } finally {
      if (!streaming) this.#inFlight--;
    }
  }

  /**
   * The config the next call of `id` runs under, as `invoke` finds it: the gateway takes the
   * function's body limit from it before reading any of the body. On the warm path it is the
   * pool's, at once (no disk access, no promise); otherwise a promise of it, re-read.
   */
  configOf(id: FunctionId): FunctionConfig | Promise<FunctionConfig> {
    return this.#warmPool(functionKey(id))?.config ?? this.#poolFor(id).then((pool) => pool.config);
  }

  /**
   * Whether a call of function `key` could run now without waiting in its pool's queue: a free
   * slot, or room for another instance within `max-instances` and the memory budget (counting idle
   * instances of other functions, which a start evicts). True for a function without a pool yet:
   * its first call finds out. The async engine asks before it takes a call of that function.
   */
  hasRoomFor(key: string): boolean {
    if (this.#closing) return false;
    const pool = this.#pools.get(key);
    if (!pool) return true;
    if (!pool.hasRoom()) return false;
    if (pool.hasFreeSlot()) return true;
    let need: number;
    try {
      need = this.driverFor(pool.config).memoryMiB(pool.config);
    } catch {
      return true; // the call fails with the driver's error, as a sync one would
    }
    if (this.#usedMiB + need <= this.#opts.memoryBudgetMiB) return true;
    let evictable = 0;
    for (const [inst, mib] of this.#reserved)
      if (inst.config.key !== key && inst.state === "ready" && inst.active === 0) evictable += mib;
    return this.#usedMiB - evictable + need <= this.#opts.memoryBudgetMiB;
  }

  /**
   * The warm fast path: a pool with a free slot on an instance of the current config, no disk
   * access. Under load (no free slot) the config is re-read at most every RESOLVE_INTERVAL_MS,
   * not per request; undefined when it is due (or there is no pool yet).
   */
  #warmPool(key: string): FunctionPool | undefined {
    const pool = this.#pools.get(key);
    if (!pool || (!pool.hasFreeSlot() && performance.now() - pool.resolvedAt >= RESOLVE_INTERVAL_MS)) return;
    return pool;
  }

  /** Re-reads the config (edits on disk apply to new instances) and returns the function's pool. */
  async #poolFor(id: FunctionId): Promise<FunctionPool> {
    let config: FunctionConfig;
    try {
      config = await this.#opts.configs.resolve(id);
    } catch (err) {
      const e = toFennecError(err);
      // At invoke time a broken config is the function's fault, not the caller's.
      if (e.code === "CONFIG_INVALID")
        throw new FennecError("FN_CONFIG_INVALID", e.message, { details: e.details });
      throw e;
    }
    const key = config.key;
    let pool = this.#pools.get(key);
    if (!pool) {
      pool = new FunctionPool(config, this);
      this.#pools.set(key, pool);
      pool.resolvedAt = performance.now();
      return pool;
    }
    this.adopt(config);
    return pool;
  }

  /**
   * A deploy or upload through the API has swapped in `config`: calls from now on go to the new
   * version, not to warm instances of the old one with free slots (which retire).
   */
  adopt(config: FunctionConfig): void {
    const pool = this.#pools.get(config.key);
    if (!pool) return;
    pool.updateConfig(config);
    pool.resolvedAt = performance.now();
  }

  /** The driver of a config's sandbox kind; DRIVER_UNAVAILABLE when that kind is not enabled on this node. */
  driverFor(config: FunctionConfig): SandboxDriver {
    const driver = this.#opts.drivers.get(config.sandbox.kind);
    if (!driver) {
      const hint = this.#opts.enableHint?.(config.sandbox.kind);
      throw new FennecError(
        "DRIVER_UNAVAILABLE",
        `${config.key}: no "${config.sandbox.kind}" sandbox driver is available on this node (available: ${[...this.#opts.drivers.keys()].join(", ")}${hint ? `; ${hint}` : ""})`,
      );
    }
    return driver;
  }

  /** PoolHost: creates an instance within the memory budget, evicting idle instances of other functions. */
  spawn(pool: FunctionPool, origin: StartType): Instance {
    const config = pool.config;
    const driver = this.driverFor(config);
    const need = driver.memoryMiB(config);
    this.#makeRoom(need, config.key);
    const inst = new Instance({
      id: randomUUID(),
      driver,
      config,
      origin,
      hub: this.#opts.hub,
      callbackBase: this.#opts.callbackBase(),
      startTimeoutMs: this.#opts.startTimeoutMs,
      node: this.node,
    });
    this.#reserved.set(inst, need);
    this.#usedMiB += need;
    this.#live.add(inst);
    inst.onStopped(() => {
      this.#unreserve(inst);
      this.#live.delete(inst);
      if (inst.initMs === 0 && inst.failure?.isFunctionFault) this.noteError(config.key, inst.failure);
      this.#opts.onInstanceStopped?.();
    });
    return inst;
  }

  /** The config revisions of a function's instances that have not stopped yet, old ones included. */
  revisionsInUse(key: string): string[] {
    const revisions: string[] = [];
    for (const inst of this.#live) if (inst.config.key === key) revisions.push(inst.config.revision);
    return revisions;
  }

  started(pool: FunctionPool): void {
    this.#errors.delete(pool.config.key);
  }

  #unreserve(inst: Instance): void {
    const mib = this.#reserved.get(inst);
    if (mib === undefined) return;
    this.#reserved.delete(inst);
    this.#usedMiB -= mib;
  }

  /**
   * Lends the slot of the recorded call `callId` while it awaits a chained call (FunctionPool.lend):
   * it stops counting against its function's `max-instances`, so the pool may start another
   * instance (within the memory budget) for the child. Returns the function that takes it back;
   * a no-op for a call not running here.
   */
  lend(callId: string): () => void {
    for (const pool of this.#pools.values()) {
      const release = pool.lend(callId);
      if (release) return release;
    }
    return () => {};
  }

  /**
   * Whether a call of function `key` can be placed now or once running calls end, with lent
   * slots not counted (FunctionPool.canPlace); a function without a pool yet is placeable (its
   * first call makes one). False means every instance that could serve it is held by an awaiting
   * caller and the memory budget has no room for another: a chained call would wait forever.
   */
  canPlace(key: string): boolean {
    const pool = this.#pools.get(key);
    if (!pool) return true;
    return pool.canPlace(() => {
      try {
        return this.#couldFit(this.driverFor(pool.config).memoryMiB(pool.config), key);
      } catch {
        return false;
      }
    });
  }

  /** Calls of function `key` awaiting chained calls (their slots lent): the async engine does not count them. */
  awaiting(key: string): number {
    return this.#pools.get(key)?.awaiting ?? 0;
  }

  /** Whether `need` MiB fit the budget, evicting idle instances of other functions as `#makeRoom` would. */
  #couldFit(need: number, forKey: string): boolean {
    let free = this.#opts.memoryBudgetMiB - this.#usedMiB;
    if (free >= need) return true;
    for (const [inst, mib] of this.#reserved) {
      if (inst.config.key === forKey || inst.state !== "ready" || inst.active > 0) continue;
      free += mib;
      if (free >= need) return true;
    }
    return false;
  }

  #makeRoom(need: number, forKey: string): void {
    const budget = this.#opts.memoryBudgetMiB;
    if (need > budget) {
      throw new FennecError(
        "NO_CAPACITY",
        `${forKey}: one instance needs ${need} MiB, more than the node's whole budget of ${budget} MiB`,
      );
    }
    while (this.#usedMiB + need > budget) {
      let victim: Instance | undefined;
      for (const inst of this.#reserved.keys()) {
        if (inst.config.key === forKey || inst.state !== "ready" || inst.active > 0) continue;
        if (!victim || inst.lastUsed < victim.lastUsed) victim = inst;
      }
      if (!victim) {
        throw new FennecError(
          "NO_CAPACITY",
          `${forKey}: needs ${need} MiB but ${this.#usedMiB} of ${budget} MiB are in use and no idle instance of another function can be evicted`,
        );
      }
      this.#opts.log.debug("evicting idle instance for memory", {
        victim: victim.config.key,
        instance: victim.id,
        for: forKey,
      });
      // The memory is counted free as soon as the victim is chosen, so it is never chosen twice.
      this.#unreserve(victim);
      void victim.close();
    }
  }

  /** Remembers why a function cannot run (a start failure, a module that does not compile). */
  noteError(key: string, error: FennecError | undefined): void {
    if (error) this.#errors.set(key, error);
    else this.#errors.delete(key);
  }

  lastError(key: string): FennecError | undefined {
    return this.#errors.get(key);
  }

  /** Starts `count` warm instances ahead of demand (thesis `/preBoot`). */
  async preBoot(id: FunctionId, count: number): Promise<{ started: number; errors: FennecError[] }> {
    if (this.#closing) throw new FennecError("SHUTTING_DOWN", "Fennec is shutting down");
    const pool = await this.#poolFor(id);
    return pool.preBoot(count);
  }

  /** Makes sure functions with `min-instances` have their floor (called at start and by the reaper). */
  async ensureMinimums(ids: readonly FunctionId[]): Promise<void> {
    for (const id of ids) {
      try {
        const pool = await this.#poolFor(id);
        if (pool.missing() > 0) await pool.preBoot(pool.missing());
      } catch (err) {
        this.#opts.log.warn("could not start min-instances", {
          function: functionKey(id),
          error: toFennecError(err).message,
        });
      }
    }
  }

  /** Forgets a deleted function: its instances drain and stop. */
  async removeFunction(key: string): Promise<void> {
    const pool = this.#pools.get(key);
    if (!pool) return;
    this.#pools.delete(key);
    pool.abandon(new FennecError("FUNCTION_NOT_FOUND", `function ${key} was deleted`));
    await Promise.all(pool.instances.map((i) => i.close()));
  }

  #reap(): void {
    const now = performance.now();
    for (const pool of this.#pools.values()) {
      for (const inst of pool.expired(now)) void inst.close();
      if (!this.#closing && pool.missing() > 0 && pool.queueLength === 0) {
        void pool.preBoot(pool.missing()).catch(() => undefined);
      }
    }
    if (!this.#closing && !this.#rechecking) {
      this.#rechecking = true;
      // The reaper runs on a timer: a failed recheck is logged, never left to end the process.
      void this.#recheck()
        .catch((err: unknown) =>
          this.#opts.log.warn("could not re-read function configs", { error: toFennecError(err).message }),
        )
        .finally(() => (this.#rechecking = false));
    }
  }

  /**
   * The warm path touches no disk, so the reaper re-reads the configs of pools that have
   * instances: a function deleted on disk has its instances stopped, a changed one (a new
   * revision) or a broken one has them retired, even while they have free slots.
   */
  async #recheck(): Promise<void> {
    for (const [key, pool] of [...this.#pools]) {
      if (pool.instances.length === 0 || this.#closing) continue;
      let config: FunctionConfig;
      try {
        config = await this.#opts.configs.resolve(pool.config.id);
      } catch (err) {
        if (this.#pools.get(key) !== pool) continue;
        const error = toFennecError(err);
        if (error.code === "FUNCTION_NOT_FOUND") {
          this.#opts.log.info("function deleted on disk: stopping its instances", { function: key });
          void this.removeFunction(key);
        } else if (error.code === "CONFIG_INVALID") {
          pool.retire();
          pool.resolvedAt = 0; // the next call re-reads the config and reports it
        }
        continue;
      }
      if (this.#pools.get(key) === pool) this.adopt(config);
    }
  }

  pools(): ReadonlyMap<string, FunctionPool> {
    return this.#pools;
  }

  /** Stops taking work, lets in-flight invocations finish (up to `graceMs`), then stops every instance. */
  async close(graceMs = 10_000): Promise<void> {
    this.#closing = true;
    clearInterval(this.#reaper);
    const deadline = performance.now() + graceMs;
    while (this.#inFlight > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    const all = [...this.#pools.values()].flatMap((p) => {
      p.abandon(new FennecError("SHUTTING_DOWN", "Fennec is shutting down"));
      return [...p.instances];
    });
    await Promise.all(all.map((i) => (this.#inFlight > 0 ? i.destroy() : i.close())));
    for (const driver of new Set(this.#opts.drivers.values())) await driver.close?.();
  }
}
