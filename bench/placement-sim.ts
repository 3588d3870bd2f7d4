/**
 * The placement rule past this machine, by simulation (docs/benchmarks.md, "Placement at scale"):
 * the rule Fennec uses (`RendezvousPlacement`, src/cluster/placement.ts, the very class) against
 * random and round-robin placement, on 10, 100 and 1,000 simulated nodes, under one skewed
 * workload, reporting the cold-start rate and the memory held per node.
 *
 * The workload: 5 functions per node whose popularity follows Zipf (s = 1: a few hot, most called
 * rarely), Poisson arrivals of 1 call/s per node, every 10 s a burst of 30 calls of one random
 * function at once; each function runs 20 ms-1 s (log-uniform), one call per instance, 128 MiB
 * per instance, keepalive 60 s (an instance idle longer is stopped), 4 GiB per node. A call
 * enters at a random node (a load balancer in front). Placement sees each node as its last
 * heartbeat described it (every 2 s), the entry node included (the real rule sees its own node
 * exactly: the simulation is the harder case). A node without room stops its least recently used
 * idle instance; with none, the call waits for a slot (counted as `queued`).
 *
 *   npm run build && node dist/bench/placement-sim.js [--nodes 10,100,1000] [--seconds 300]
 */
import { writeFileSync } from "node:fs";
import type { NodeInfo, PlacementRule } from "../src/cluster/contract.js";
import { RendezvousPlacement } from "../src/cluster/placement.js";
import { barChart } from "./plot.js";

const HEARTBEAT_S = 2;
const KEEPALIVE_S = 60;
const BUDGET_MIB = 4096;
const INSTANCE_MIB = 128;
const COLD_START_S = 0.25;
const FUNCTIONS_PER_NODE = 5;
const CALLS_PER_NODE_S = 1;
const BURST_EVERY_S = 10;
const BURST_CALLS = 30;

/** A seeded generator (mulberry32): every policy sees the same calls. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Call {
  readonly at: number;
  readonly fn: number;
  readonly entry: number;
}

/** The workload of one cluster size: calls in time order, and each function's run time. */
function workload(nodes: number, seconds: number, seed: number): { calls: Call[]; execS: number[] } {
  const r = rng(seed);
  const fns = nodes * FUNCTIONS_PER_NODE;
  // Zipf(1) by its cumulative weights, sampled by binary search.
  const cum: number[] = [];
  let total = 0;
  for (let k = 1; k <= fns; k++) cum.push((total += 1 / k));
  const pick = () => {
    const x = r() * total;
    let lo = 0;
    let hi = fns - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cum[mid]! < x) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
  const execS = Array.from({ length: fns }, () => 0.02 * Math.pow(50, r()));
  const calls: Call[] = [];
  const rate = nodes * CALLS_PER_NODE_S;
  for (let t = -Math.log(1 - r()) / rate; t < seconds; t += -Math.log(1 - r()) / rate)
    calls.push({ at: t, fn: pick(), entry: Math.floor(r() * nodes) });
  for (let t = BURST_EVERY_S; t < seconds; t += BURST_EVERY_S) {
    const fn = Math.floor(r() * fns);
    for (let i = 0; i < BURST_CALLS; i++)
      calls.push({ at: t + r() * 0.2, fn, entry: Math.floor(r() * nodes) });
  }
  calls.sort((a, b) => a.at - b.at);
  return { calls, execS };
}

interface Instance {
  busyUntil: number;
}

class SimNode {
  readonly instances = new Map<number, Instance[]>();
  reservedMiB = 0;

  /** Stops instances idle past their keepalive. */
  expire(now: number): void {
    for (const [fn, list] of this.instances) {
      const kept = list.filter((i) => i.busyUntil > now - KEEPALIVE_S);
      this.reservedMiB -= (list.length - kept.length) * INSTANCE_MIB;
      if (kept.length === 0) this.instances.delete(fn);
      else if (kept.length !== list.length) this.instances.set(fn, kept);
    }
  }

  /** Runs a call: warm on an idle instance, else a cold start (evicting the LRU idle one if full). */
  run(fn: number, now: number, execS: number): "warm" | "cold" | "queued" {
    this.expire(now);
    const list = this.instances.get(fn) ?? [];
    const idle = list.find((i) => i.busyUntil <= now);
    if (idle) {
      idle.busyUntil = now + execS;
      return "warm";
    }
    if (this.reservedMiB + INSTANCE_MIB > BUDGET_MIB && !this.#evict(now)) {
      // Full of busy instances: wait for the first of this function's to free, or any slot.
      const first = list.sort((a, b) => a.busyUntil - b.busyUntil)[0];
      if (first) first.busyUntil += execS;
      return "queued";
    }
    list.push({ busyUntil: now + COLD_START_S + execS });
    this.instances.set(fn, list);
    this.reservedMiB += INSTANCE_MIB;
    return "cold";
  }

  #evict(now: number): boolean {
    let victim: { fn: number; i: number; at: number } | undefined;
    for (const [fn, list] of this.instances)
      list.forEach((inst, i) => {
        if (inst.busyUntil <= now && (!victim || inst.busyUntil < victim.at))
          victim = { fn, i, at: inst.busyUntil };
      });
    if (!victim) return false;
    const list = this.instances.get(victim.fn)!;
    list.splice(victim.i, 1);
    if (list.length === 0) this.instances.delete(victim.fn);
    this.reservedMiB -= INSTANCE_MIB;
    return true;
  }

  /** What its heartbeat says. */
  info(name: string, now: number): NodeInfo {
    const functions: Record<
      string,
      { revision: string; warm: number; freeSlots: number; memoryMiB: number }
    > = {};
    for (const [fn, list] of this.instances)
      functions[`u/f${fn}`] = {
        revision: "r",
        warm: list.length,
        freeSlots: list.filter((i) => i.busyUntil <= now).length,
        memoryMiB: INSTANCE_MIB,
      };
    return {
      name,
      incarnation: name,
      url: "",
      startedAt: 0,
      heartbeatAt: now,
      sandboxes: ["wasm"],
      missing: {},
      memory: { budgetMiB: BUDGET_MIB, reservedMiB: this.reservedMiB },
      inFlight: 0,
      functions,
    };
  }
}

type Policy = "fennec" | "random" | "round-robin";

interface Result {
  readonly policy: Policy;
  readonly nodes: number;
  readonly calls: number;
  readonly coldRate: number;
  readonly queuedRate: number;
  /** Time-averaged mean and maximum of the memory held per node, and the peak of the maximum. */
  readonly meanMiB: number;
  readonly maxMiB: number;
  readonly peakMiB: number;
}

function simulate(policy: Policy, n: number, seconds: number, seed: number): Result {
  const { calls, execS } = workload(n, seconds, seed);
  const nodes = Array.from({ length: n }, () => new SimNode());
  const names = nodes.map((_, i) => `node-${i}`);
  const rule: PlacementRule = new RendezvousPlacement();
  const r = rng(seed ^ 0x5bd1e995);
  let rr = 0;
  let view: NodeInfo[] = nodes.map((node, i) => node.info(names[i]!, 0));
  let nextBeat = HEARTBEAT_S;
  let cold = 0;
  let queued = 0;
  let samples = 0;
  let meanSum = 0;
  let maxSum = 0;
  let peak = 0;
  const index = new Map(names.map((name, i) => [name, i]));
  for (const call of calls) {
    while (call.at >= nextBeat) {
      // Heartbeats (and the memory sample) every 2 s.
      for (const node of nodes) node.expire(nextBeat);
      view = nodes.map((node, i) => node.info(names[i]!, nextBeat));
      const mem = nodes.map((node) => node.reservedMiB);
      const max = Math.max(...mem);
      meanSum += mem.reduce((a, b) => a + b, 0) / n;
      maxSum += max;
      peak = Math.max(peak, max);
      samples++;
      nextBeat += HEARTBEAT_S;
    }
    let target: number;
    if (policy === "random") target = Math.floor(r() * n);
    else if (policy === "round-robin") target = rr++ % n;
    else {
      const placed = rule.place(
        { function: `u/f${call.fn}`, sandbox: "wasm", memoryMiB: INSTANCE_MIB },
        view,
        names[call.entry]!,
      );
      target = index.get(placed!.node)!;
    }
    const how = nodes[target]!.run(call.fn, call.at, execS[call.fn]!);
    if (how === "cold") cold++;
    else if (how === "queued") queued++;
  }
  return {
    policy,
    nodes: n,
    calls: calls.length,
    coldRate: cold / calls.length,
    queuedRate: queued / calls.length,
    meanMiB: meanSum / samples,
    maxMiB: maxSum / samples,
    peakMiB: peak,
  };
}

function main(): void {
  const args = process.argv.slice(2);
  const arg = (name: string, fallback: string) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 ? args[i + 1]! : fallback;
  };
  const sizes = arg("nodes", "10,100,1000").split(",").map(Number);
  const seconds = Number(arg("seconds", "300"));
  const results: Result[] = [];
  const policies: Policy[] = ["fennec", "random", "round-robin"];
  for (const n of sizes)
    for (const policy of policies) {
      const t0 = Date.now();
      const res = simulate(policy, n, seconds, 42 + n);
      results.push(res);
      console.error(
        `${policy} on ${n} nodes: ${res.calls} calls simulated in ${((Date.now() - t0) / 1000).toFixed(1)} s`,
      );
    }
  const pct = (x: number) => `${(100 * x).toFixed(1)} %`;
  const lines = [
    "| nodes | placement | calls | cold starts | queued | memory per node, mean | max (time-avg) | max (peak) |",
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ...results.map(
      (r) =>
        `| ${r.nodes.toLocaleString("en")} | ${r.policy} | ${r.calls.toLocaleString("en")} | ${pct(r.coldRate)} | ${pct(r.queuedRate)} | ${Math.round(r.meanMiB)} MiB | ${Math.round(r.maxMiB)} MiB | ${Math.round(r.peakMiB)} MiB |`,
    ),
  ];
  console.log(lines.join("\n"));
  const colours: Record<Policy, string> = { fennec: "#1b7837", random: "#d6604d", "round-robin": "#4393c3" };
  const categories = sizes.map((n) => `${n.toLocaleString("en")} nodes`);
  const series = (value: (r: Result) => number) =>
    policies.map((policy) => ({
      label: policy === "fennec" ? "Fennec's rule (warm first, rendezvous home)" : policy,
      colour: colours[policy],
      values: sizes.map((n) => {
        const r = results.find((x) => x.policy === policy && x.nodes === n);
        return r === undefined ? undefined : Number(value(r).toFixed(1));
      }),
    }));
  const out = arg("svg", "");
  if (out) {
    writeFileSync(
      `${out}-cold-starts.svg`,
      barChart(
        "Cold starts under a skewed workload (simulated)",
        "cold starts, % of calls",
        categories,
        series((r) => 100 * r.coldRate),
      ),
    );
    writeFileSync(
      `${out}-memory.svg`,
      barChart(
        "Memory held per node, mean over time (simulated)",
        "MiB per node",
        categories,
        series((r) => r.meanMiB),
      ),
    );
  }
}

main();
