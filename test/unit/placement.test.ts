import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { FunctionLoad, NodeInfo, PlacementRequest } from "../../src/cluster/contract.js";
import { RendezvousPlacement } from "../../src/cluster/placement.js";

/** A node as a heartbeat describes it. */
function node(
  name: string,
  opts: {
    sandboxes?: string[];
    budgetMiB?: number;
    reservedMiB?: number;
    functions?: Record<string, Partial<FunctionLoad>>;
  } = {},
): NodeInfo {
  const functions: Record<string, FunctionLoad> = {};
  for (const [k, v] of Object.entries(opts.functions ?? {}))
    functions[k] = { revision: "r1", warm: 1, freeSlots: 1, memoryMiB: 64, ...v };
  return {
    name,
    incarnation: `${name}-1`,
    url: `http://127.0.0.1:1/${name}`,
    startedAt: 0,
    heartbeatAt: 0,
    sandboxes: opts.sandboxes ?? ["wasm", "process"],
    missing: {},
    memory: { budgetMiB: opts.budgetMiB ?? 4096, reservedMiB: opts.reservedMiB ?? 0 },
    inFlight: 0,
    functions,
  };
}

const fn = (name: string, sandbox = "wasm", memoryMiB = 64): PlacementRequest => ({
  function: `default/${name}`,
  sandbox,
  memoryMiB,
});

const rule = new RendezvousPlacement();
const three = [node("a"), node("b"), node("c")];

describe("placement: the rendezvous rule", () => {
  it("sends a function only to nodes that have its sandbox, and nowhere when none has", () => {
    const nodes = [
      node("a", { sandboxes: ["wasm"] }),
      node("b", { sandboxes: ["wasm", "vm/qemu"] }),
      node("c"),
    ];
    for (let i = 0; i < 50; i++) {
      assert.equal(rule.place(fn(`vm${i}`, "vm/qemu"), nodes, "a")?.node, "b");
      assert.equal(rule.place(fn(`vm${i}`, "vm/qemu"), nodes, "c")?.node, "b");
    }
    assert.equal(rule.place(fn("x", "vm/firecracker"), nodes, "a"), undefined);
    // A warm instance on a node without the sandbox (a stale or lying heartbeat) does not count.
    const lying = [
      node("a", { sandboxes: ["wasm"], functions: { "default/v": {} } }),
      node("b", { sandboxes: ["vm/qemu"] }),
    ];
    assert.equal(rule.place(fn("v", "vm/qemu"), lying, "a")?.node, "b");
  });

  it("takes a warm instance with a free slot first, this node's own before any other", () => {
    const f = fn("hot");
    const home = rule.place(f, three, "a")!;
    assert.equal(home.reason, "home");
    const other = three.find((n) => n.name !== home.node)!.name;
    // Warm on a node that is not the home: it wins over the home, from every entry node.
    const warmElsewhere = three.map((n) =>
      n.name === other ? node(n.name, { functions: { [f.function]: {} } }) : n,
    );
    for (const self of ["a", "b", "c"])
      assert.deepEqual(rule.place(f, warmElsewhere, self), { node: other, reason: "warm" });
    // This node warm too: it serves it itself.
    const self = three.find((n) => n.name !== other)!.name;
    const bothWarm = warmElsewhere.map((n) =>
      n.name === self ? node(self, { functions: { [f.function]: {} } }) : n,
    );
    assert.deepEqual(rule.place(f, bothWarm, self), { node: self, reason: "warm" });
    // An instance with no free slot is not a warm choice: the home (where more start) is.
    const busy = three.map((n) =>
      n.name === other ? node(n.name, { functions: { [f.function]: { freeSlots: 0 } } }) : n,
    );
    assert.deepEqual(rule.place(f, busy, self), home);
  });

  it("picks, among warm nodes, the same one from every entry node (the best ranked)", () => {
    const f = fn("shared");
    const order = rule.rank(f, three).map((n) => n.name);
    const warmAll = three.map((n) => node(n.name, { functions: { [f.function]: { freeSlots: 2 } } }));
    // From a node that has none of it (a fourth), the best-ranked warm one.
    const nodes = [...warmAll, node("d", { sandboxes: ["process"] })];
    assert.equal(rule.place(f, nodes, "d")?.node, order[0]);
  });

  it("keeps a function on one home whoever takes the call, with heartbeats that do not show it warm yet", () => {
    // Twenty sequential calls arriving at any node, every view stale (no instance reported): one node.
    const f = fn("seq");
    const chosen = new Set<string>();
    for (let call = 0; call < 20; call++) chosen.add(rule.place(f, three, ["a", "b", "c"][call % 3]!)!.node);
    assert.equal(chosen.size, 1);
    // The home is the first of its rank, and does not depend on the order the nodes are listed in.
    const [home] = chosen;
    assert.equal(rule.rank(f, three)[0]!.name, home);
    assert.equal(rule.place(f, [...three].reverse(), "a")?.node, home);
  });

  it("moves only the functions whose home left when a node leaves", () => {
    const nodes = Array.from({ length: 10 }, (_, i) => node(`n${i}`));
    const before = new Map<string, string>();
    for (let i = 0; i < 1000; i++) before.set(`f${i}`, rule.place(fn(`f${i}`), nodes, "n0")!.node);
    const without = nodes.filter((n) => n.name !== "n3");
    let moved = 0;
    for (const [name, home] of before) {
      const now = rule.place(fn(name), without, "n0")!.node;
      if (home === "n3") assert.notEqual(now, "n3");
      else if (now !== home) moved++;
    }
    assert.equal(moved, 0);
  });

  it("spills to the next node of the function's order when its home has no memory room", () => {
    const f = fn("big", "wasm", 512);
    const order = rule.rank(f, three).map((n) => n.name);
    const full = three.map((n) => (n.name === order[0] ? node(n.name, { reservedMiB: 4096 - 256 }) : n));
    assert.deepEqual(rule.place(f, full, "a"), { node: order[1], reason: "spill" });
    // Both first ones full: the third.
    const fuller = full.map((n) => (n.name === order[1] ? node(n.name, { reservedMiB: 4000 }) : n));
    assert.deepEqual(rule.place(f, fuller, "a"), { node: order[2], reason: "spill" });
    // All full: the one with most room left.
    const allFull = [
      node(order[0]!, { reservedMiB: 4000 }),
      node(order[1]!, { reservedMiB: 3800 }),
      node(order[2]!, { reservedMiB: 4090 }),
    ];
    assert.deepEqual(rule.place(f, allFull, "a"), { node: order[1], reason: "spill" });
  });

  it("balances homes across nodes in proportion to their memory budgets", () => {
    const even = Array.from({ length: 10 }, (_, i) => node(`n${i}`));
    const count = (nodes: NodeInfo[], n: number) => {
      const homes = new Map<string, number>();
      for (let i = 0; i < n; i++) {
        const to = rule.place(fn(`f${i}`), nodes, "x")!.node;
        homes.set(to, (homes.get(to) ?? 0) + 1);
      }
      return homes;
    };
    const homes = count(even, 10_000);
    assert.equal(homes.size, 10);
    // 1,000 each on average; binomial spread is ~30.
    for (const [name, c] of homes) assert.ok(c > 850 && c < 1150, `${name} is home to ${c} of 10,000`);
    // A node with twice the budget is home to about twice as many.
    const weighted = [node("big", { budgetMiB: 8192 }), node("small", { budgetMiB: 4096 })];
    const w = count(weighted, 6000);
    const ratio = w.get("big")! / w.get("small")!;
    assert.ok(ratio > 1.7 && ratio < 2.3, `big:small = ${ratio}`);
  });
});
