import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { addUpStats, nodeTable, type NodeRow } from "../../src/cli/cluster-output.js";

/** A /stats document with the thesis' exec figures of `samples` (ns) and one function. */
function statsOf(samples: number[], init: number[]): Record<string, unknown> {
  const mean = (v: number[]) => v.reduce((s, x) => s + x, 0) / v.length;
  const std = (v: number[]) => Math.sqrt(v.reduce((s, x) => s + (x - mean(v)) ** 2, 0) / v.length);
  return {
    NumbInitVms: init.length,
    VmInitTimeNanoAvg: init.length ? Math.trunc(mean(init)) : -1,
    VmInitTimeNanoStd: init.length ? std(init) : -1,
    VmInitTimeNano95: 0,
    VmInitTimeNanoMax: init.length ? Math.max(...init) : -1,
    FuncExecTimeNanoAvg: Math.trunc(mean(samples)),
    FuncExecTimeNanoStd: std(samples),
    FuncExecTimeNano95: 0,
    FuncExecTimeNanoMax: Math.max(...samples),
    memory: { reservedMiB: 64, budgetMiB: 1024 },
    instances: { "default/f": { starting: 0, ready: 1, busy: 0, stopping: 0, queued: 0 } },
    functions: {
      "default/f": {
        invocations: samples.length,
        errors: { FN_TIMEOUT: 1 },
        starts: { cold: 1, warm: samples.length - 1, prebooted: 0, restored: 0 },
        instancesStarted: 1,
        queueWaitMs: null,
        initMs: null,
        ttfbMs: null,
        execMs: {
          count: samples.length,
          avg: mean(samples) / 1e6,
          p50: 0,
          p95: 0,
          p99: 0,
          max: Math.max(...samples) / 1e6,
        },
      },
    },
    asyncCalls: {
      "default/f": {
        queued: 3,
        running: 1,
        dead: 0,
        oldestQueuedAgeMs: 50,
        retries: 2,
        requeued: 0,
        deadLettered: 1,
      },
    },
    callbacks: { delivered: 1, failed: 0 },
  };
}

describe("fennec stats --cluster: adding up /stats", () => {
  it("sums counters, pools means and deviations exactly, keeps the largest maximum, leaves percentiles out", () => {
    const a = [1e6, 2e6, 3e6];
    const b = [10e6, 20e6];
    const all = [...a, ...b];
    const sum = addUpStats(
      new Map([
        ["n1", statsOf(a, [5e6])],
        ["n2", statsOf(b, [])],
      ]),
    );
    const mean = all.reduce((s, x) => s + x, 0) / all.length;
    const std = Math.sqrt(all.reduce((s, x) => s + (x - mean) ** 2, 0) / all.length);
    assert.deepEqual(sum["nodes"], ["n1", "n2"]);
    // The truncation of each node's mean shifts the pooled one by less than a nanosecond.
    assert.ok(Math.abs((sum["FuncExecTimeNanoAvg"] as number) - mean) <= 1);
    assert.ok(Math.abs((sum["FuncExecTimeNanoStd"] as number) - std) < 1);
    assert.equal(sum["FuncExecTimeNanoMax"], 20e6);
    assert.equal(sum["NumbInitVms"], 1);
    assert.equal(sum["VmInitTimeNanoAvg"], 5e6);
    assert.equal(sum["FuncExecTimeNano95"], undefined);
    assert.deepEqual(sum["memory"], { reservedMiB: 128, budgetMiB: 2048 });
    const f = (sum["functions"] as Record<string, Record<string, unknown>>)["default/f"]!;
    assert.equal(f["invocations"], 5);
    assert.deepEqual(f["errors"], { FN_TIMEOUT: 2 });
    assert.deepEqual(f["starts"], { cold: 2, warm: 3, prebooted: 0, restored: 0 });
    assert.deepEqual(f["execMs"], { count: 5, avg: mean / 1e6, max: 20 });
    assert.equal(f["initMs"], null);
    assert.deepEqual((sum["instances"] as Record<string, unknown>)["default/f"], {
      starting: 0,
      ready: 2,
      busy: 0,
      stopping: 0,
      queued: 0,
    });
    // The store's queue is shared by the nodes: not counted twice; what each node did is summed.
    assert.deepEqual((sum["asyncCalls"] as Record<string, unknown>)["default/f"], {
      queued: 3,
      running: 1,
      dead: 0,
      oldestQueuedAgeMs: 50,
      retries: 4,
      requeued: 0,
      deadLettered: 2,
    });
    assert.deepEqual(sum["callbacks"], { delivered: 2, failed: 0 });
  });

  it("no samples anywhere stay -1, as on one node", () => {
    const empty = {
      NumbInitVms: 0,
      VmInitTimeNanoAvg: -1,
      VmInitTimeNanoStd: -1,
      VmInitTimeNanoMax: -1,
      FuncExecTimeNanoAvg: -1,
      FuncExecTimeNanoStd: -1,
      FuncExecTimeNanoMax: -1,
    };
    const sum = addUpStats(
      new Map([
        ["n1", empty],
        ["n2", empty],
      ]),
    );
    assert.equal(sum["FuncExecTimeNanoAvg"], -1);
    assert.equal(sum["VmInitTimeNanoMax"], -1);
  });
});

describe("fennec nodes: the table", () => {
  it("one line a node, then its sandboxes and each missing one with why", () => {
    const row = (name: string, extra: Partial<NodeRow>): NodeRow => ({
      name,
      url: `http://10.0.0.1:8123`,
      sandboxes: ["wasm"],
      missing: {},
      memory: { budgetMiB: 4096, reservedMiB: 128 },
      inFlight: 2,
      functions: {},
      ...extra,
    });
    const text = nodeTable([
      row("a", {
        functions: { "default/hello": { warm: 2, freeSlots: 1 }, "bob/x": { warm: 1, freeSlots: 0 } },
      }),
      row("bb", { missing: { "vm/qemu": "qemu-system-x86_64 is not installed" } }),
    ]);
    assert.equal(
      text,
      [
        "NODE  ADDRESS               MEMORY (MiB)  IN FLIGHT  WARM",
        "a     http://10.0.0.1:8123  128/4096      2          bob/x=1 default/hello=2",
        "  sandboxes: wasm",
        "bb    http://10.0.0.1:8123  128/4096      2          -",
        "  sandboxes: wasm",
        "  missing vm/qemu: qemu-system-x86_64 is not installed",
        "",
      ].join("\n"),
    );
  });
});
