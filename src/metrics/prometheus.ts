import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { subscribeAsync, subscribeNode, type AsyncCallEvent } from "../core/events.js";
import type { InvocationRecord } from "../core/types.js";
import type { QueueFigures } from "../store/contract.js";

export interface InstanceCounts {
  readonly function: string;
  readonly state: string;
  readonly count: number;
}

const BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
];

/** Observations of one series since the last scrape: counts per bucket of BUCKETS (and above), sum, count. */
class PendingHistogram {
  readonly counts = new Float64Array(BUCKETS.length + 1);
  sum = 0;
  count = 0;

  observe(value: number): void {
    let i = 0;
    while (i < BUCKETS.length && value > BUCKETS[i]!) i++;
    this.counts[i]!++;
    this.sum += value;
    this.count++;
  }
}

/** One function's calls since the last scrape. */
class PendingFigures {
  /** Warm calls that succeeded, nearly all of them on a busy function: a field, not a map entry. */
  warmOk = 0;
  /** The other calls, by `startType \n outcome`. */
  readonly outcome = new Map<string, number>();
  readonly queue = new PendingHistogram();
  readonly init = new PendingHistogram();
  readonly ttfb = new PendingHistogram();
  readonly exec = new PendingHistogram();
}

/**
 * prom-client's Histogram, plus adding a series' observations counted elsewhere. prom-client has
 * no public way to add counts per bucket; its series are `{ labels, bucketValues (by upper bound),
 * sum, count }` in `hashMap` (prom-client 15), made with the right key by its public `zero`.
 */
class BatchedHistogram<T extends string> extends Histogram<T> {
  add(labels: Partial<Record<T, string>>, pending: PendingHistogram): void {
    let series = this.#series(labels);
    if (!series) {
      this.zero(labels);
      series = this.#series(labels);
      if (!series) throw new Error("prom-client's Histogram no longer keeps its series as expected");
    }
    for (let i = 0; i < BUCKETS.length; i++) series.bucketValues[BUCKETS[i]!]! += pending.counts[i]!;
    series.sum += pending.sum;
    series.count += pending.count;
  }

  #series(labels: Partial<Record<T, string>>): HistogramSeries | undefined {
    const map = (this as unknown as { hashMap: Record<string, HistogramSeries> }).hashMap;
    search: for (const series of Object.values(map)) {
      for (const name in labels) if (series.labels[name] !== labels[name]) continue search;
      return series;
    }
    return undefined;
  }
}

interface HistogramSeries {
  readonly labels: Record<string, string | number>;
  readonly bucketValues: Record<number, number>;
  sum: number;
  count: number;
}

/** Prometheus metrics fed by diagnostics channels; live instance counts are read at scrape time. */
export class PrometheusMetrics {
  readonly registry = new Registry();
  readonly #invocations: Counter<"function" | "start_type" | "outcome">;
  readonly #phase: BatchedHistogram<"function" | "phase">;
  /** Calls counted since the last scrape, per function (see `#record`). */
  readonly #pending = new Map<string, PendingFigures>();
  readonly #init: Histogram<"function" | "driver">;
  readonly #asyncCalls: Counter<"function" | "event">;
  readonly #callbacks: Counter<"outcome">;
  readonly #unsubscribe: () => void;

  constructor(
    instanceCounts: () => InstanceCounts[],
    memory: () => { reservedMiB: number; budgetMiB: number },
    node?: string,
  ) {
    collectDefaultMetrics({ register: this.registry, prefix: "fennec_process_" });
    const flush = () => this.#flush();
    this.#invocations = new Counter({
      name: "fennec_invocations_total",
      help: "Invocations by function, start type and outcome (ok or an error code).",
      labelNames: ["function", "start_type", "outcome"],
      registers: [this.registry],
      collect: flush,
    });
    this.#phase = new BatchedHistogram({
      name: "fennec_invocation_phase_seconds",
      help: "Time an invocation spent queued, waiting for its instance to start, executing until the first byte of its response body (ttfb), and executing until its end (exec).",
      labelNames: ["function", "phase"],
      buckets: BUCKETS,
      registers: [this.registry],
      collect: flush,
    });
    this.#init = new Histogram({
      name: "fennec_instance_init_seconds",
      help: "Time from starting an instance to it being ready.",
      labelNames: ["function", "driver"],
      buckets: BUCKETS,
      registers: [this.registry],
    });
    new Gauge({
      name: "fennec_instances",
      help: "Live instances by function and state.",
      labelNames: ["function", "state"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const c of instanceCounts()) this.set({ function: c.function, state: c.state }, c.count);
      },
    });
    new Gauge({
      name: "fennec_memory_reserved_mib",
      help: "Memory reserved by live instances against the node budget.",
      registers: [this.registry],
      collect() {
        this.set(memory().reservedMiB);
      },
    });
    new Gauge({
      name: "fennec_memory_budget_mib",
      help: "The node's memory budget for instances.",
      registers: [this.registry],
      collect() {
        this.set(memory().budgetMiB);
      },
    });
    this.#asyncCalls = new Counter({
      name: "fennec_async_calls_total",
      help: "What the async engine did with calls: retry (an attempt failed, run again later), requeue (put back without an attempt spent: the platform had no room), dead (dead-lettered).",
      labelNames: ["function", "event"],
      registers: [this.registry],
    });
    this.#callbacks = new Counter({
      name: "fennec_async_callbacks_total",
      help: "Callbacks (X-Callback-Url) by outcome: delivered, or failed after their attempts.",
      labelNames: ["outcome"],
      registers: [this.registry],
    });
    const offNode = subscribeNode(node, {
      invocation: (r) => this.#record(r),
      ready: (e) => this.#init.observe({ function: e.function, driver: e.driver }, e.initMs / 1000),
    });
    const offAsync = subscribeAsync(node, (e) => this.#asyncEvent(e));
    this.#unsubscribe = () => {
      offNode();
      offAsync();
    };
  }

  /** Adds the async queue gauges, read from the store at scrape time. */
  watchQueues(figures: () => Promise<ReadonlyMap<string, QueueFigures>>): void {
    // One read of the store per scrape, shared by the four gauges.
    let pending: Promise<ReadonlyMap<string, QueueFigures>> | undefined;
    const read = () => {
      pending ??= figures().finally(() => setImmediate(() => (pending = undefined)));
      return pending;
    };
    const gauge = (name: string, help: string, value: (q: QueueFigures) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ["function"],
        registers: [this.registry],
        async collect() {
          this.reset();
          for (const [fn, q] of await read()) this.set({ function: fn }, value(q));
        },
      });
    gauge("fennec_async_queued", "Async calls waiting to run, by function.", (q) => q.queued);
    gauge("fennec_async_running", "Async calls running, by function.", (q) => q.running);
    gauge("fennec_async_dead", "Dead-lettered async calls kept, by function.", (q) => q.dead);
    gauge(
      "fennec_async_oldest_queued_seconds",
      "Age of the oldest queued async call, by function (0 when none).",
      (q) => q.oldestQueuedAgeMs / 1000,
    );
  }

  #asyncEvent(e: AsyncCallEvent): void {
    if (e.kind === "callback") this.#callbacks.inc({ outcome: e.outcome ?? "failed" });
    else this.#asyncCalls.inc({ function: e.function, event: e.kind });
  }

  /**
   * Drops every series of a deleted function. Its label sets are read back from the metrics
   * (prom-client removes a series only by its full label set), so recording keeps no list of them.
   */
  async forget(fn: string): Promise<void> {
    this.#pending.delete(fn);
    for (const metric of [this.#invocations, this.#phase, this.#init, this.#asyncCalls] as const) {
      for (const { labels } of (await metric.get()).values) {
        if (labels["function"] !== fn) continue;
        const { le: _bucket, ...series } = labels as Record<string, string | number>; // buckets add "le"
        (metric as { remove(labels: Record<string, string | number>): void }).remove(series);
      }
    }
  }

  /**
   * Counts a call into this process's own per-function figures, not into prom-client: its `inc`
   * and `observe` validate and hash a label object on every call (≈ 2 µs for the four a call
   * makes, on the gateway's thread), so they are handed over per series at scrape time instead
   * (`#flush`, prom-client's `collect` hook), which gives the same exposition.
   */
  #record(r: InvocationRecord): void {
    let f = this.#pending.get(r.function);
    if (!f) this.#pending.set(r.function, (f = new PendingFigures()));
    const outcomes = r.startType === "warm" && r.errorCode === undefined ? undefined : f.outcome;
    if (outcomes) {
      const key = `${r.startType ?? "none"}\n${r.errorCode ?? "ok"}`;
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
    } else f.warmOk++;
    if (r.instanceId === undefined) return;
    f.queue.observe(r.queueWaitMs / 1000);
    if (r.initMs > 0) f.init.observe(r.initMs / 1000);
    // An invocation that failed before the function answered has no first byte.
    if (r.status > 0) f.ttfb.observe(r.ttfbMs / 1000);
    f.exec.observe(r.execMs / 1000);
  }

  /** Hands what calls counted since the last scrape to prom-client (both metrics' `collect`). */
  #flush(): void {
    if (this.#pending.size === 0) return;
    for (const [fn, f] of this.#pending) {
      if (f.warmOk > 0) this.#invocations.inc({ function: fn, start_type: "warm", outcome: "ok" }, f.warmOk);
      for (const [key, n] of f.outcome) {
        const [startType, outcome] = key.split("\n") as [string, string];
        this.#invocations.inc({ function: fn, start_type: startType, outcome }, n);
      }
      for (const [phase, h] of [
        ["queue", f.queue],
        ["init", f.init],
        ["ttfb", f.ttfb],
        ["exec", f.exec],
      ] as const)
        if (h.count > 0) this.#phase.add({ function: fn, phase }, h);
    }
    this.#pending.clear();
  }

  close(): void {
    this.#unsubscribe();
  }
}
