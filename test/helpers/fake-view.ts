import type { ClusterView, FunctionLoad, NodeEvent, NodeInfo } from "../../src/cluster/contract.js";

/** A node as a heartbeat describes it, with what a test does not care about filled in. */
export function nodeInfo(
  name: string,
  url: string,
  opts: {
    sandboxes?: string[];
    budgetMiB?: number;
    reservedMiB?: number;
    functions?: Record<string, Partial<FunctionLoad>>;
    incarnation?: string;
  } = {},
): NodeInfo {
  const functions: Record<string, FunctionLoad> = {};
  for (const [k, v] of Object.entries(opts.functions ?? {}))
    functions[k] = { revision: "r1", warm: 1, freeSlots: 1, memoryMiB: 16, ...v };
  return {
    name,
    incarnation: opts.incarnation ?? `${name}-1`,
    url,
    startedAt: Date.now(),
    heartbeatAt: Date.now(),
    sandboxes: opts.sandboxes ?? ["wasm"],
    missing: {},
    memory: { budgetMiB: opts.budgetMiB ?? 4096, reservedMiB: opts.reservedMiB ?? 0 },
    inFlight: 0,
    functions,
  };
}

/** A ClusterView a test sets by hand (membership over NATS is tested on its own). */
export class FakeView implements ClusterView {
  readonly self: string;
  #nodes = new Map<string, NodeInfo>();
  readonly #listeners = new Set<(event: NodeEvent) => void>();

  constructor(self: string, nodes: NodeInfo[] = []) {
    this.self = self;
    for (const n of nodes) this.#nodes.set(n.name, n);
  }

  nodes(): readonly NodeInfo[] {
    return [...this.#nodes.values()];
  }

  node(name: string): NodeInfo | undefined {
    return this.#nodes.get(name);
  }

  onChange(listener: (event: NodeEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Adds or replaces a node, telling listeners it joined (or was refreshed). */
  set(node: NodeInfo): void {
    const type = this.#nodes.has(node.name) ? "updated" : "joined";
    this.#nodes.set(node.name, node);
    for (const l of [...this.#listeners]) l({ type, node });
  }

  /** Removes a node, telling listeners it left. */
  remove(name: string): void {
    const node = this.#nodes.get(name);
    if (!node) return;
    this.#nodes.delete(name);
    for (const l of [...this.#listeners]) l({ type: "left", node });
  }

  get listeners(): number {
    return this.#listeners.size;
  }
}
