import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { NodeEvent, NodeInfo } from "../../src/cluster/contract.js";
import { startTakeover, type TakeoverView } from "../../src/cluster/takeover.js";
import { createLogger } from "../../src/core/log.js";
import { waitFor } from "../helpers/wait.js";

const info = (name: string, incarnation: string): NodeInfo => ({
  name,
  incarnation,
  url: `http://127.0.0.1:1/${name}`,
  startedAt: 1,
  heartbeatAt: 2,
  sandboxes: ["wasm"],
  missing: {},
  memory: { budgetMiB: 1024, reservedMiB: 0 },
  inFlight: 0,
  functions: {},
});

/**
 * A view whose events the test emits, and whose bucket says `dead` of the incarnations in `gone`,
 * `stopped` of those in `stopped`, `alive` of others.
 */
function fakeView(gone: Set<string>, predecessor?: NodeInfo, stopped = new Set<string>()) {
  const listeners = new Set<(e: NodeEvent) => void>();
  const view: TakeoverView = {
    onChange(l) {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    departure: async (n) =>
      gone.has(n.incarnation) ? "dead" : stopped.has(n.incarnation) ? "stopped" : "alive",
    predecessor,
  };
  return { view, emit: (e: NodeEvent) => listeners.forEach((l) => l(e)) };
}

describe("takeover: a node that left has its async work taken back", () => {
  const log = createLogger("silent");

  it("takes back the calls of a node the bucket confirms gone, and of none other", async () => {
    const taken: string[] = [];
    const engine = {
      takeOver: async (holder: string) => {
        taken.push(holder);
        return { calls: 1, callbacks: 0 };
      },
    };
    const { view, emit } = fakeView(new Set(["dead-0", "dead-1"]), info("self", "previous-1"));
    const takeover = startTakeover({ view, log });
    // Before the engine runs: kept, and taken back once it is handed over.
    emit({ type: "left", node: info("early", "dead-0") });
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(taken.length, 0, "not before the engine runs");
    takeover.ready(engine);
    await waitFor("the predecessor's calls", () => taken.includes("previous-1") && taken.includes("dead-0"));
    emit({ type: "joined", node: info("x", "x-1") });
    emit({ type: "updated", node: info("x", "x-1") });
    // Told as left by a lagging watch, but its key has a newer entry: not taken.
    emit({ type: "left", node: info("slow", "alive-1") });
    emit({ type: "left", node: info("d", "dead-1") });
    await waitFor("the dead node's calls", () => taken.includes("dead-1"));
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(taken.sort(), ["dead-0", "dead-1", "previous-1"]);
    takeover.stop();
    emit({ type: "left", node: info("d", "dead-1") });
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(taken.length, 3, "nothing after stop");
  });

  it("leaves a node that stopped cleanly its drain, then takes what it left", async () => {
    const taken: Array<[string, number]> = [];
    const engine = {
      takeOver: async (holder: string) => {
        taken.push([holder, Date.now()]);
        return { calls: 0, callbacks: 1 };
      },
    };
    const { view, emit } = fakeView(new Set(), undefined, new Set(["clean-1"]));
    const takeover = startTakeover({ view, log, drainMs: 300 });
    takeover.ready(engine);
    const since = Date.now();
    emit({ type: "left", node: info("c", "clean-1") });
    await waitFor("the stopped node's leftovers", () => taken.length === 1);
    assert.ok(taken[0]![1] - since >= 300, "not during its drain");
    takeover.stop();
  });

  it("survives a store that fails: the leases are left to give the calls back", async () => {
    const engine = {
      takeOver: async (): Promise<{ calls: number; callbacks: number }> => {
        throw new Error("nats down");
      },
    };
    const { view, emit } = fakeView(new Set(["dead-2"]));
    const takeover = startTakeover({ view, log });
    takeover.ready(engine);
    emit({ type: "left", node: info("d", "dead-2") });
    await new Promise((r) => setTimeout(r, 50));
    takeover.stop();
  });
});
