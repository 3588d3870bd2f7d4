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

/** Prometheus metrics fed by diagnostics channels; live instance counts are read at scrape time. */
export class PrometheusMetrics {
  readonly registry = new Registry();
  readonly #invocations: Counter<"function" | "start_type" | "outcome">;
  readonly #phase: Histogram<"function" | "phase">;
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
    this.#invocations = new Counter({
      name: "fennec_invocations_total",
      help: "Invocations by function, start type and outcome (ok or an error code).",
      labelNames: ["function", "start_type", "outcome"],
      registers: [this.registry],
    });
    this.#phase = new Histogram({
      name: "fennec_invocation_phase_seconds",
      help: "Time an invocation spent queued, waiting for its instance to start, executing until the first byte of its response body (ttfb), and executing until its end (exec).",
      labelNames: ["function", "phase"],
      buckets: BUCKETS,
      registers: [this.registry],
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
    for (const metric of [this.#invocations, this.#phase, this.#init, this.#asyncCalls] as const) {
      for (const { labels } of (await metric.get()).values) {
        if (labels["function"] !== fn) continue;
        const { le: _bucket, ...series } = labels as Record<string, string | number>; // buckets add "le"
        (metric as { remove(labels: Record<string, string | number>): void }).remove(series);
      }
    }
  }

  #record(r: InvocationRecord): void {
    const labels = { function: r.function, start_type: r.startType ?? "none", outcome: r.errorCode ?? "ok" };
    this.#invocations.inc(labels);
    if (r.instanceId === undefined) return;
    const phase = (name: string, ms: number) =>
      this.#phase.observe({ function: r.function, phase: name }, ms / 1000);
    phase("queue", r.queueWaitMs);
    if (r.initMs > 0) phase("init", r.initMs);
    // An invocation that failed before the function answered has no first byte.
    if (r.status > 0) phase("ttfb", r.ttfbMs);
    phase("exec", r.execMs);
  }

  close(): void {
    this.#unsubscribe();
  }
}
