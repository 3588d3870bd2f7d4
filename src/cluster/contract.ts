/**
 * Fennec on many nodes: the contracts the cluster's parts share (docs/cluster.md).
 *
 * A cluster is N `fennec serve --cluster nats://... --node NAME` processes and one NATS server (or
 * a NATS cluster) with JetStream. NATS is the only thing the nodes share: membership and load in a
 * key-value bucket (`membership.ts`), functions in a key-value bucket and an object store
 * (`function-share.ts`), async calls, records, logs and state in the JetStream invocation store
 * (`src/store/jetstream/`). Calls between nodes go straight from gateway to gateway over HTTP
 * (`forward.ts`), chosen by one placement rule (`placement.ts`), so a body streams both ways
 * without passing through NATS.
 *
 * Without `--cluster` none of this is loaded: one node, the embedded store.
 */

/** The names of the NATS resources Fennec creates (all prefixed, so an operator can tell them apart). */
export const CLUSTER_BUCKETS = {
  /** Key-value: one key per live node (its name), the value its `NodeInfo` as JSON. */
  nodes: "fennec-nodes",
  /** Key-value: one key per function (`user.name`), the value its `SharedFunction` as JSON. */
  functions: "fennec-functions",
  /** Object store: a function's directory as a tar, named `<user>.<name>@<revision>`. */
  artefacts: "fennec-artefacts",
  /**
   * Key-value: the cluster's own settings; today one key, `forward-key`, the secret that signs
   * calls forwarded between nodes (cluster-secret.ts). Readable by whoever uses the NATS account.
   */
  cluster: "fennec-cluster",
} as const;

/** The request header a forwarded call carries: the node that forwarded it (it is served where it lands). */
export const FORWARDED_BY_HEADER = "x-fennec-forwarded-by";
/** Every response carries the name of the node whose instance served it. */
export const NODE_HEADER = "x-fennec-node";

/** How often a node refreshes its `NodeInfo`, and how long after the last refresh it counts as gone. */
export const HEARTBEAT_MS = 2_000;
export const NODE_TTL_MS = 10_000;

/** A function's load on one node, as that node last reported it. */
export interface FunctionLoad {
  /** The revision its instances run. */
  readonly revision: string | undefined;
  /** Instances up (idle or busy). */
  readonly warm: number;
  /** Calls that one more could take at once without starting an instance (Σ free concurrent slots). */
  readonly freeSlots: number;
  /** One instance's memory reservation. */
  readonly memoryMiB: number;
}

/** What one node says of itself, refreshed every `HEARTBEAT_MS` in the nodes bucket. */
export interface NodeInfo {
  /** `--node`, default the host's name; unique among live nodes. */
  readonly name: string;
  /** A random id made at each start: tells two processes claiming one name apart. */
  readonly incarnation: string;
  /** The gateway's base URL other nodes forward calls to (`http://10.0.0.5:8123`). */
  readonly url: string;
  readonly startedAt: number;
  readonly heartbeatAt: number;
  /**
   * The sandboxes that can run here, as `sandboxOf` (sandboxes.ts) names them: `wasm`, `process`,
   * `oci/runc`, `oci/runsc`, `container`, `container/runsc`, `vm/qemu`, `vm/firecracker`,
   * `vm/unikernel`... (the whole table: docs/cluster.md, "Membership").
   */
  readonly sandboxes: readonly string[];
  /** The sandboxes that cannot, with why (`vm/firecracker`: "no firecracker binary"). */
  readonly missing: Readonly<Record<string, string>>;
  readonly memory: { readonly budgetMiB: number; readonly reservedMiB: number };
  /** Calls running here now. */
  readonly inFlight: number;
  /** By function key (`user/name`); only functions with instances up. */
  readonly functions: Readonly<Record<string, FunctionLoad>>;
}

/** A membership change as a node sees it. */
export interface NodeEvent {
  readonly type: "joined" | "updated" | "left";
  readonly node: NodeInfo;
}

/** The live nodes as this node sees them: kept by `membership.ts`, read by placement and `/system/nodes`. */
export interface ClusterView {
  /** This node's name. */
  readonly self: string;
  /** Every live node, this one included (its own entry is always current, not a heartbeat old). */
  nodes(): readonly NodeInfo[];
  node(name: string): NodeInfo | undefined;
  /** Told of every join, refresh and departure from now on; returns the function that stops it. */
  onChange(listener: (event: NodeEvent) => void): () => void;
}

/** What placement needs to know of a call's function. */
export interface PlacementRequest {
  /** `user/name`. */
  readonly function: string;
  /** The sandbox it needs, as `NodeInfo.sandboxes` names them. */
  readonly sandbox: string;
  /** One instance's memory reservation. */
  readonly memoryMiB: number;
}

/** Where a call goes, and why (kept in its record and shown by `fennec calls get`). */
export interface Placement {
  readonly node: string;
  readonly reason: "warm" | "home" | "spill";
}

/** The placement rule: pure, so it is unit-tested and simulated on 1,000 nodes without NATS. */
export interface PlacementRule {
  /** The node for this call, or undefined when no live node has the sandbox (NO_NODE_FOR_SANDBOX). */
  place(request: PlacementRequest, nodes: readonly NodeInfo[], self: string): Placement | undefined;
}

/** A function as the cluster holds it: every node serves this revision. */
export interface SharedFunction {
  /** `user/name`. */
  readonly function: string;
  readonly revision: string;
  /** The object holding the function's directory as a tar (`CLUSTER_BUCKETS.artefacts`). */
  readonly artefact: string;
  /** The node that deployed it, and when: the later deploy wins when two nodes disagree. */
  readonly deployedBy: string;
  readonly deployedAt: number;
}
