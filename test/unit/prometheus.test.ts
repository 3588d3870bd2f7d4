import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Counter, Histogram, Registry } from "prom-client";
import { publishInvocation } from "../../src/core/events.js";
import type { InvocationRecord } from "../../src/core/types.js";
import { PrometheusMetrics } from "../../src/metrics/prometheus.js";

const BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
];

/** What the metrics were before calls were counted in batches: prom-client observing every call. */
function reference(records: readonly InvocationRecord[]): Registry {
  const registry = new Registry();
  const calls = new Counter({
    name: "fennec_invocations_total",
    help: "x",
    labelNames: ["function", "start_type", "outcome"],
    registers: [registry],
  });
  const phases = new Histogram({
    name: "fennec_invocation_phase_seconds",
    help: "x",
    labelNames: ["function", "phase"],
    buckets: BUCKETS,
    registers: [registry],
  });
  for (const r of records) {
    calls.inc({ function: r.function, start_type: r.startType ?? "none", outcome: r.errorCode ?? "ok" });
    if (r.instanceId === undefined) continue;
    const phase = (name: string, ms: number) =>
      phases.observe({ function: r.function, phase: name }, ms / 1000);
    phase("queue", r.queueWaitMs);
    if (r.initMs > 0) phase("init", r.initMs);
    if (r.status > 0) phase("ttfb", r.ttfbMs);
    phase("exec", r.execMs);
  }
  return registry;
}

/** The sample lines of two metrics, sorted (the order of series in the text is not part of the format). */
async function samples(registry: Registry): Promise<string[]> {
  const lines: string[] = [];
  for (const name of ["fennec_invocations_total", "fennec_invocation_phase_seconds"]) {
    const metric = registry.getSingleMetric(name);
    assert.ok(metric, name);
    const text = await registry.getSingleMetricAsString(name);
    lines.push(...text.split("\n").filter((l) => l !== "" && !l.startsWith("#")));
  }
  return lines.sort();
}

/** Equal series and values; sums to a relative 1e-9 (adding in batches rounds differently). */
function assertSameSamples(actual: string[], expected: string[]): void {
  const split = (line: string) => {
    const at = line.lastIndexOf(" ");
    return [line.slice(0, at), Number(line.slice(at + 1))] as const;
  };
  assert.deepEqual(
    actual.map((l) => split(l)[0]),
    expected.map((l) => split(l)[0]),
  );
  actual.forEach((line, i) => {
    const [series, value] = split(line);
    const want = split(expected[i]!)[1];
    if (series.includes("_sum"))
      assert.ok(Math.abs(value - want) <= 1e-9 * Math.abs(want), `${line} ≠ ${want}`);
    else assert.equal(value, want, series);
  });
}

function record(i: number, node: string): InvocationRecord {
  const failed = i % 7 === 0;
  return {
    node,
    function: i % 3 === 0 ? "default/b" : "default/a",
    instanceId: i % 11 === 0 ? undefined : "inst",
    startType: i % 11 === 0 ? undefined : i % 5 === 0 ? "cold" : "warm",
    queueWaitMs: (i % 13) * 0.07,
    initMs: i % 5 === 0 ? 3.5 + i : 0,
    ttfbMs: 0.05 * (i % 40),
    execMs: 0.06 * (i % 400) + (i % 17 === 0 ? 40_000 : 0), // some above the last bucket
    status: failed ? 0 : 200,
    errorCode: failed ? "FN_TRAP" : i % 11 === 0 ? "QUEUE_FULL" : undefined,
  };
}

describe("PrometheusMetrics: calls counted per scrape, not per call", () => {
  it("exposes the same counters and histograms as observing every call in prom-client", async () => {
    const node = `prometheus-test-${process.pid}`;
    const metrics = new PrometheusMetrics(
      () => [],
      () => ({ reservedMiB: 0, budgetMiB: 0 }),
      node,
    );
    try {
      const all: InvocationRecord[] = [];
      // Two scrapes with calls before each: the second adds to what the first handed over.
      for (const [from, to] of [
        [1, 500],
        [500, 1200],
      ] as const) {
        for (let i = from; i < to; i++) {
          const r = record(i, node);
          all.push(r);
          publishInvocation(r);
        }
        assertSameSamples(await samples(metrics.registry), await samples(reference(all)));
      }
      // A deleted function's series go, counted-but-not-scraped calls included.
      publishInvocation(record(3, node));
      await metrics.forget("default/b");
      const left = await samples(metrics.registry);
      assert.ok(left.length > 0);
      assert.ok(
        left.every((l) => !l.includes('function="default/b"')),
        left.join("\n"),
      );
    } finally {
      metrics.close();
    }
  });
});
