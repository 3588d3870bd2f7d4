/**
 * The placement rule of a cluster (docs/cluster.md, "Placement"): which node serves a call.
 *
 * 1. Only nodes that have the function's sandbox (a heterogeneous cluster).
 * 2. Warm first: a node with an instance of the function that has a free slot. This node first
 *    when it has one (its own state is exact, and serving here costs no hop); else the warm node
 *    that ranks first in the function's order (3.), so every entry node picks the same one.
 * 3. Otherwise the function's home: its first node in a weighted rendezvous order (highest random
 *    weight hashing of function × node, weighted by the node's memory budget) among the nodes
 *    with memory room for one more instance; a full home spills to the next in that order.
 *
 * Why rendezvous and not OpenWhisk's `hash % n` with co-prime steps: the order depends only on
 * the function and the set of nodes, so every entry node computes the same home from heartbeats
 * that may be seconds old, a node joining or leaving moves only the functions whose home it is
 * (1/n of them), and weights by budget give a big node a proportionally bigger share. Because
 * the home is the same for every entry node, the warm instance a cold call leaves behind is
 * where the next call goes even before any heartbeat says it is warm (twenty sequential calls:
 * one instance). That is Faasten's "go where the cached VM is", without its central scheduler.
 *
 * Pure: no clock, no I/O. The hash of each node's name is kept between calls (a cache, not state
 * that changes an answer).
 */
import type { NodeInfo, Placement, PlacementRequest, PlacementRule } from "./contract.js";

/** 32-bit FNV-1a of a string (its UTF-16 units): cheap and well spread for short names. */
export function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** Mixes two 32-bit hashes into a number in (0, 1) (murmur3's finaliser on their combination). */
function unit(a: number, b: number): number {
  let h = (a ^ Math.imul(b, 0x9e3779b1)) >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return ((h >>> 0) + 0.5) / 4294967296;
}

/** The free memory a node reports. */
export function freeMiB(node: NodeInfo): number {
  return node.memory.budgetMiB - node.memory.reservedMiB;
}

/**
 * The rendezvous rule (the rule `fennec serve --cluster` uses). `rank` is exposed for tests and
 * the simulation: the function's order of nodes, best first.
 */
export class RendezvousPlacement implements PlacementRule {
  readonly #nameHash = new Map<string, number>();

  #hashOf(name: string): number {
    let h = this.#nameHash.get(name);
    if (h === undefined) {
      // Bounded: names of nodes that left are dropped once the cache is much larger than a cluster.
      if (this.#nameHash.size > 65_536) this.#nameHash.clear();
      h = fnv1a(name);
      this.#nameHash.set(name, h);
    }
    return h;
  }

  /**
   * The node's score for the function: weight / -ln(u), u uniform in (0,1) from the pair's hash
   * (Schindelhauer and Schomaker's weighted rendezvous): the share of functions a node is home
   * to is proportional to its weight. Compared as logarithms to keep small weights exact.
   */
  score(functionHash: number, node: NodeInfo): number {
    const u = unit(functionHash, this.#hashOf(node.name));
    return Math.log(Math.max(1, node.memory.budgetMiB)) - Math.log(-Math.log(u));
  }

  /** The eligible nodes (with the sandbox) in the function's rendezvous order, best first. */
  rank(request: PlacementRequest, nodes: readonly NodeInfo[]): NodeInfo[] {
    const fh = fnv1a(request.function);
    return nodes
      .filter((n) => n.sandboxes.includes(request.sandbox))
      .map((n) => ({ n, s: this.score(fh, n) }))
      .sort((a, b) => b.s - a.s || (a.n.name < b.n.name ? -1 : 1))
      .map((x) => x.n);
  }

  place(request: PlacementRequest, nodes: readonly NodeInfo[], self: string): Placement | undefined {
    const fh = fnv1a(request.function);
    const fn = request.function;
    // One pass: the best-ranked node overall, with a warm free slot, and with room; and, for when
    // none has room, the one with the most free memory.
    let home: { n: NodeInfo; s: number } | undefined;
    let warm: { n: NodeInfo; s: number } | undefined;
    let roomy: { n: NodeInfo; s: number } | undefined;
    let freest: NodeInfo | undefined;
    for (const n of nodes) {
      if (!n.sandboxes.includes(request.sandbox)) continue;
      const hasWarm = (n.functions[fn]?.freeSlots ?? 0) > 0;
      // This node's own entry is current: a free slot here is certain, and costs no hop.
      if (hasWarm && n.name === self) return { node: self, reason: "warm" };
      const s = this.score(fh, n);
      if (!home || s > home.s) home = { n, s };
      if (hasWarm && (!warm || s > warm.s)) warm = { n, s };
      if (freeMiB(n) >= request.memoryMiB && (!roomy || s > roomy.s)) roomy = { n, s };
      if (!freest || freeMiB(n) > freeMiB(freest)) freest = n;
    }
    if (!home || !freest) return undefined;
    if (warm) return { node: warm.n.name, reason: "warm" };
    if (roomy) return { node: roomy.n.name, reason: roomy.n === home.n ? "home" : "spill" };
    // Every node is full: the one with most room queues it (or evicts idle instances) best.
    return { node: freest.name, reason: freest === home.n ? "home" : "spill" };
  }
}
