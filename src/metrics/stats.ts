import {
  subscribeAsync,
  subscribeNode,
  type AsyncCallEvent,
  type InstanceReadyEvent,
} from "../core/events.js";
import type { InvocationRecord, StartType } from "../core/types.js";
import type { QueueFigures } from "../store/contract.js";
import { Samples } from "./summary.js";

interface FunctionFigures {
  invocations: number;
  errors: Record<string, number>;
  starts: Record<StartType, number>;
  queueWaitMs: Samples;
  initMs: Samples;
  ttfbMs: Samples;
  execMs: Samples;
  instancesStarted: number;
}

const NS_PER_MS = 1e6;

/**
 * The `/stats` document: the thesis' global keys with their exact meaning (nanoseconds, never
 * reset; init = instance start to ready; exec = the whole handler, from the request reaching the
 * scheduler to its response, so a cold call includes its wait for the instance) plus per-function
 * figures that split each call into queue wait, init and execution in the sandbox (to the first
 * byte of the response body, ttfb, and to its end, exec: a streamed response ends long after it starts).
 * It listens to diagnostics channels; the scheduler never calls it.
 */
export class StatsCollector {
  readonly #init = new Samples();
  readonly #exec = new Samples();
  readonly #functions = new Map<string, FunctionFigures>();
  /** What the async engine did since start, per function. */
  readonly #async = new Map<string, { retries: number; requeued: number; deadLettered: number }>();
  readonly #callbacks = { delivered: 0, failed: 0 };
  readonly #unsubscribe: () => void;

  /** Counts the events of scheduler `node` only (all of them when undefined). */
  constructor(node?: string) {
    const offNode = subscribeNode(node, {
      invocation: (r) => this.#record(r),
      ready: (e) => this.#ready(e),
    });
    const offAsync = subscribeAsync(node, (e) => this.#asyncEvent(e));
    this.#unsubscribe = () => {
      offNode();
      offAsync();
    };
  }

  close(): void {
    this.#unsubscribe();
  }

  #asyncEvent(e: AsyncCallEvent): void {
    if (e.kind === "callback") {
      this.#callbacks[e.outcome ?? "failed"]++;
      return;
    }
    let f = this.#async.get(e.function);
    if (!f) this.#async.set(e.function, (f = { retries: 0, requeued: 0, deadLettered: 0 }));
    if (e.kind === "retry") f.retries++;
    else if (e.kind === "requeue") f.requeued++;
    else f.deadLettered++;
  }

  /**
   * The async queue per function: what the store holds now (`queued`, `running`, `dead`, the age
   * of the oldest queued call) and what this node did since it started (`retries`, `requeued`:
   * put back for the platform's sake, `deadLettered`), plus callbacks delivered and given up.
   */
  asyncCalls(queues: ReadonlyMap<string, QueueFigures>): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const fn of new Set([...queues.keys(), ...this.#async.keys()])) {
      const q = queues.get(fn) ?? { queued: 0, running: 0, dead: 0, oldestQueuedAgeMs: 0 };
      out[fn] = { ...q, ...(this.#async.get(fn) ?? { retries: 0, requeued: 0, deadLettered: 0 }) };
    }
    return { asyncCalls: out, callbacks: { ...this.#callbacks } };
  }

  #figures(fn: string): FunctionFigures {
    let f = this.#functions.get(fn);
    if (!f) {
      f = {
        invocations: 0,
        errors: {},
        starts: { cold: 0, warm: 0, prebooted: 0, restored: 0 },
        queueWaitMs: new Samples(100_000),
        initMs: new Samples(100_000),
        ttfbMs: new Samples(100_000),
        execMs: new Samples(100_000),
        instancesStarted: 0,
      };
      this.#functions.set(fn, f);
    }
    return f;
  }

  #ready(e: InstanceReadyEvent): void {
    this.#init.add(Math.round(e.initMs * NS_PER_MS));
    this.#figures(e.function).instancesStarted++;
  }

  /** Drops a deleted function's figures. */
  forget(fn: string): void {
    this.#functions.delete(fn);
    this.#async.delete(fn);
  }

  #record(r: InvocationRecord): void {
    const f = this.#figures(r.function);
    f.invocations++;
    if (r.errorCode) f.errors[r.errorCode] = (f.errors[r.errorCode] ?? 0) + 1;
    if (r.startType) f.starts[r.startType]++;
    if (r.instanceId === undefined) return;
    f.queueWaitMs.add(r.queueWaitMs);
    if (r.initMs > 0) f.initMs.add(r.initMs);
    if (r.status > 0) f.ttfbMs.add(r.ttfbMs);
    f.execMs.add(r.execMs);
    // The thesis timed its whole handler, so its exec time includes waiting for a cold start.
    this.#exec.add(Math.round((r.queueWaitMs + r.execMs) * NS_PER_MS));
  }

  /** The thesis keys, exactly: counts and nanosecond summaries, -1 when empty. */
  thesis(): Record<string, number> {
    const i = this.#init.thesis();
    const e = this.#exec.thesis();
    return {
      NumbInitVms: this.#init.count,
      VmInitTimeNanoAvg: i.avg,
      VmInitTimeNanoStd: i.std,
      VmInitTimeNano95: i.p95,
      VmInitTimeNanoMax: i.max,
      FuncExecTimeNanoAvg: e.avg,
      FuncExecTimeNanoStd: e.std,
      FuncExecTimeNano95: e.p95,
      FuncExecTimeNanoMax: e.max,
    };
  }

  functions(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const [name, f] of this.#functions) {
      out[name] = {
        invocations: f.invocations,
        errors: f.errors,
        starts: f.starts,
        instancesStarted: f.instancesStarted,
        queueWaitMs: f.queueWaitMs.percentiles() ?? null,
        initMs: f.initMs.percentiles() ?? null,
        ttfbMs: f.ttfbMs.percentiles() ?? null,
        execMs: f.execMs.percentiles() ?? null,
      };
    }
    return out;
  }
}
