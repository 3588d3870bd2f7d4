import { randomUUID } from "node:crypto";
import { Kvm, type KV, type KvEntry } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { FennecError, toFennecError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { onServerLost } from "./server-loss.js";
import {
  CLUSTER_BUCKETS,
  HEARTBEAT_MS,
  NODE_TTL_MS,
  type ClusterView,
  type NodeEvent,
  type NodeInfo,
} from "./contract.js";

/** What a node says of itself that changes: read from its scheduler and drivers at each heartbeat. */
export type LocalState = Omit<NodeInfo, "name" | "incarnation" | "url" | "startedAt" | "heartbeatAt">;

export interface MembershipOptions {
  readonly name: string;
  readonly log: Logger;
  /** This node's state now (its own entry in `nodes()` is built from it at every call). */
  readonly local: () => LocalState;
  /** Heartbeat and time-to-live (tests shorten them); defaults HEARTBEAT_MS and NODE_TTL_MS. */
  readonly heartbeatMs?: number;
  readonly ttlMs?: number;
  /** Copies of the nodes bucket on a NATS cluster, when it is created (`--cluster-replicas`; default 1). */
  readonly replicas?: number | undefined;
}

/** How often entries are checked for age; an entry leaves at most this long after its TTL. */
const SWEEP_MS = 1_000;
/** How long a stop waits for NATS to take this node's key away. */
const CLOSE_MS = 3_000;
/** A delay between two sweeps longer than this means this process was paused (SIGSTOP, a debugger). */
const PAUSE_MS = 3_000;

/** What this node keeps of another: its last entry and when it arrived, by this node's clock. */
interface Seen {
  readonly info: NodeInfo;
  /** `Date.now()` at arrival, or the entry's server time when it was read as history. */
  readonly at: number;
  /** The entry's revision in the bucket: a direct read finds out whether the node wrote since. */
  readonly revision: number;
}

/**
 * Cluster membership over the `fennec-nodes` key-value bucket (docs/cluster.md, "Membership").
 *
 * Each node keeps one key, its name, holding its `NodeInfo`, refreshed every HEARTBEAT_MS with a
 * compare-and-set on the revision it last wrote, and watches the bucket. Liveness is by the time
 * an entry *arrived* here (this node's clock; the sender's `heartbeatAt` is only shown), so clocks
 * need not agree: a node whose entry has not been refreshed for NODE_TTL_MS leaves the list, and
 * comes back at its next refresh (a partition that heals). nats-server 2.9 has no per-key TTL,
 * so the server does not expire entries; the bucket's max age only drops those of nodes long gone.
 *
 * A name is claimed at start with a CAS: a key that is free (absent or deleted) is created; a key
 * whose holder still refreshes it is refused with NODE_NAME_TAKEN; a stale one (a node that died
 * under this name) is taken over. A clean stop deletes the key, so the others see it leave at once.
 */
export class Membership implements ClusterView {
  readonly self: string;
  readonly #o: MembershipOptions;
  readonly #kv: KV;
  readonly #incarnation = randomUUID();
  readonly #startedAt = Date.now();
  readonly #heartbeatMs: number;
  readonly #ttlMs: number;
  readonly #others = new Map<string, Seen>();
  /** Nodes past the TTL whose key is being read directly before they are dropped. */
  readonly #confirming = new Set<string>();
  readonly #listeners = new Set<(event: NodeEvent) => void>();
  #url = "";
  /** The revision of the last entry this node wrote (its CAS), undefined before it claimed its name. */
  #revision: number | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #sweeper: NodeJS.Timeout | undefined;
  #lastSweep = Date.now();
  #stopWatch: (() => void) | undefined;
  #beating: Promise<void> = Promise.resolve();
  /** The process whose stale entry the claim took over, if it did. */
  #predecessor: NodeInfo | undefined;
  /** Set when another live process holds this name (it took it over while this one was cut off). */
  #displacedBy: string | undefined;
  #closed = false;
  #stopServerLoss: () => void = () => undefined;

  private constructor(kv: KV, options: MembershipOptions) {
    this.self = options.name;
    this.#o = options;
    this.#kv = kv;
    this.#heartbeatMs = options.heartbeatMs ?? HEARTBEAT_MS;
    this.#ttlMs = options.ttlMs ?? NODE_TTL_MS;
  }

  /**
   * Opens (or creates) the nodes bucket and claims `name`: NODE_NAME_TAKEN when a live node holds
   * it. Call it before serving; `publish(url)` starts the heartbeats once the gateway listens.
   */
  static async join(nc: NatsConnection, options: MembershipOptions): Promise<Membership> {
    checkNodeName(options.name);
    const ttlMs = options.ttlMs ?? NODE_TTL_MS;
    const kv = await new Kvm(nc).create(CLUSTER_BUCKETS.nodes, {
      history: 1,
      // Only a safety net for entries of nodes long gone: liveness is decided by age (above).
      ttl: Math.max(60_000, 6 * ttlMs),
      replicas: options.replicas ?? 1,
    });
    const membership = new Membership(kv, options);
    await membership.#claim();
    await membership.#watch();
    membership.#start();
    // The watch's consumer may have lived on a lost server of the NATS cluster: re-opened at once.
    membership.#stopServerLoss = onServerLost(nc, () => void membership.#rewatch());
    return membership;
  }

  /**
   * This process's random id in the cluster (its `NodeInfo.incarnation`): the async engine leases
   * calls under it, so a node that sees this one leave knows whose calls to give back.
   */
  get incarnation(): string {
    return this.#incarnation;
  }

  /**
   * The process that held this node's name before this one, when the claim took over its stale
   * entry (it died within the bucket's max age): its calls and callbacks are this node's to take
   * back, since no other node may have seen it leave.
   */
  get predecessor(): NodeInfo | undefined {
    return this.#predecessor;
  }

  /**
   * How the process `info` describes (one told as `left`) went, asked of the bucket rather than
   * of this node's watch, which may lag: `dead` when its key holds another incarnation or the very
   * entry this node last saw (no heartbeat for the TTL: a crash, or cut off); `stopped` when its
   * key is gone (a clean stop deletes it first, then drains); `alive` when the key has a newer
   * entry of the same process (only this node's view was late).
   */
  async departure(info: NodeInfo): Promise<"dead" | "stopped" | "alive"> {
    const entry = await this.#kv.get(info.name);
    if (!entry || entry.operation !== "PUT") return "stopped";
    const now = parse(entry);
    return !now || now.incarnation !== info.incarnation || now.heartbeatAt === info.heartbeatAt
      ? "dead"
      : "alive";
  }

  /**
   * Publishes this node's gateway `url` (known once it listens). Until then its entry holds the
   * name with no URL, and the others do not list it: nothing can be sent to it yet.
   */
  async publish(url: string): Promise<void> {
    this.#url = url;
    await this.#queueBeat();
  }

  /** Heartbeats from the claim on (so a slow start keeps the name), and the sweep of stale nodes. */
  #start(): void {
    this.#heartbeat = setInterval(() => void this.#queueBeat(), this.#heartbeatMs);
    this.#heartbeat.unref();
    this.#sweeper = setInterval(() => this.#sweep(), SWEEP_MS);
    this.#sweeper.unref();
  }

  /** One refresh at a time: a slow server must not pile writes up behind each other. */
  #queueBeat(): Promise<void> {
    this.#beating = this.#beating
      .then(() => this.#beat())
      .catch((err: unknown) => {
        this.#o.log.debug("heartbeat not written", { error: toFennecError(err).message });
      });
    return this.#beating;
  }

  nodes(): readonly NodeInfo[] {
    return [this.#own(), ...[...this.#others.values()].map((s) => s.info)].sort((a, b) =>
      a.name.localeCompare(b.name),
    );
  }

  node(name: string): NodeInfo | undefined {
    return name === this.self ? this.#own() : this.#others.get(name)?.info;
  }

  onChange(listener: (event: NodeEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Stops refreshing and watching, and deletes this node's key (the others see it leave now). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#heartbeat);
    clearInterval(this.#sweeper);
    this.#stopServerLoss();
    this.#stopWatch?.();
    // Bounded: with NATS down, a stop must not wait for its timeouts; the others then see this
    // node leave at its TTL instead.
    const bounded = <T>(p: Promise<T>) =>
      Promise.race([p, new Promise<void>((r) => setTimeout(r, CLOSE_MS).unref())]);
    await bounded(this.#beating.catch(() => undefined));
    // Only the entry this process wrote: never one another process holds under this name.
    if (this.#revision !== undefined && !this.#displacedBy)
      await bounded(
        this.#kv.delete(this.self, { previousSeq: this.#revision }).catch((err: unknown) => {
          this.#o.log.warn("could not remove this node from the cluster's list; it leaves at its TTL", {
            error: toFennecError(err).message,
          });
        }),
      );
    this.#listeners.clear();
  }

  #own(): NodeInfo {
    return {
      ...this.#o.local(),
      name: this.self,
      incarnation: this.#incarnation,
      url: this.#url,
      startedAt: this.#startedAt,
      heartbeatAt: Date.now(),
    };
  }

  #encode(): Uint8Array {
    return new TextEncoder().encode(JSON.stringify(this.#own()));
  }

  /**
   * Takes the name: creates the key if it is free; if it is held, waits to see whether its holder
   * refreshes it. A refresh within the TTL is a live node: NODE_NAME_TAKEN. Silence for the TTL
   * is a dead one: its entry is taken over (CAS on the revision seen, so two starting at once
   * cannot both win).
   */
  async #claim(): Promise<void> {
    const deadline = Date.now() + 2 * this.#ttlMs + 5_000;
    for (;;) {
      const entry = await this.#kv.get(this.self);
      try {
        if (!entry || entry.operation !== "PUT") {
          this.#revision = await this.#kv.create(this.self, this.#encode());
          return;
        }
        const holder = parse(entry);
        if (this.#age(entry) >= this.#ttlMs) {
          this.#revision = await this.#kv.update(this.self, this.#encode(), entry.revision);
          this.#predecessor = holder;
          this.#o.log.info("took over the name of a node that stopped heartbeating", {
            node: this.self,
            previous: holder?.incarnation,
          });
          return;
        }
        // Fresh by its time: a live holder refreshes it within a heartbeat or two.
        const refreshed = await this.#refreshedWithin(entry.revision, this.#ttlMs - this.#age(entry));
        if (refreshed)
          throw new FennecError(
            "NODE_NAME_TAKEN",
            `another live node is already named ${JSON.stringify(this.self)} in this cluster` +
              (holder?.url ? ` (at ${holder.url})` : "") +
              `: give this one another --node NAME`,
          );
        this.#revision = await this.#kv.update(this.self, this.#encode(), entry.revision);
        this.#predecessor = holder;
        this.#o.log.info("took over the name of a node that stopped heartbeating", { node: this.self });
        return;
      } catch (err) {
        if (err instanceof FennecError) throw err;
        // A CAS lost to another process: look again (it may be a live rival now).
        if (!isWrongSequence(err) || Date.now() > deadline) throw err;
      }
    }
  }

  /** Whether key `self` gets a revision after `revision` within `ms`. */
  async #refreshedWithin(revision: number, ms: number): Promise<boolean> {
    const until = Date.now() + Math.max(0, ms) + 500;
    while (Date.now() < until) {
      await new Promise((r) => setTimeout(r, Math.min(250, this.#heartbeatMs / 4)));
      const now = await this.#kv.get(this.self);
      if (!now || now.revision !== revision) return now?.operation === "PUT";
    }
    return false;
  }

  /** How old an entry is: by the server's time of it against this node's clock (history only). */
  #age(entry: KvEntry): number {
    return Math.max(0, Date.now() - entry.created.getTime());
  }

  /** A new watch in place of the current one, retried every second until JetStream answers. */
  async #rewatch(): Promise<void> {
    this.#stopWatch?.();
    while (!this.#closed) {
      try {
        await this.#watch();
        return;
      } catch {
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
  }

  async #watch(): Promise<void> {
    // Entries up to this revision are history, judged by their server time; later ones arrive now.
    const history = (await this.#kv.status()).streamInfo.state.last_seq;
    const watch = await this.#kv.watch();
    let stopped = false;
    this.#stopWatch = () => {
      stopped = true;
      watch.stop();
    };
    void (async () => {
      for await (const entry of watch) this.#onEntry(entry, entry.revision <= history);
    })()
      .catch((err: unknown) => {
        this.#o.log.warn("the cluster's node list stopped updating", { error: toFennecError(err).message });
      })
      .finally(() => {
        // The watch ends only when stopped; if it ended by itself, start another.
        if (stopped || this.#closed) return;
        setTimeout(() => void this.#watch().catch(() => undefined), 1_000).unref();
      });
  }

  #onEntry(entry: KvEntry, isHistory: boolean): void {
    if (entry.key === this.self) {
      this.#noticeOwnKey(entry);
      return;
    }
    const before = this.#others.get(entry.key);
    if (entry.operation !== "PUT") {
      if (before) {
        this.#others.delete(entry.key);
        this.#emit({ type: "left", node: before.info });
      }
      return;
    }
    const info = parse(entry);
    if (!info || info.name !== entry.key) return;
    // A node that claimed its name but does not serve yet: nothing can be sent to it.
    if (!info.url) return;
    // An entry read as history has the server's time; one that arrives now, now.
    const at = isHistory ? Date.now() - this.#age(entry) : Date.now();
    if (Date.now() - at >= this.#ttlMs) return;
    this.#others.set(entry.key, { info, at, revision: entry.revision });
    // A new incarnation is another process: the one before it is gone (calls sent to it are lost),
    // even if it crashed and came back within the TTL.
    if (before && before.info.incarnation !== info.incarnation)
      this.#emit({ type: "left", node: before.info });
    const joined = !before || before.info.incarnation !== info.incarnation;
    this.#emit({ type: joined ? "joined" : "updated", node: info });
  }

  /** Another process wrote this node's key: it holds the name now (it took over while this one was away). */
  #noticeOwnKey(entry: KvEntry): void {
    if (entry.operation !== "PUT") return;
    const info = parse(entry);
    if (!info || info.incarnation === this.#incarnation) return;
    if (this.#displacedBy !== info.incarnation)
      this.#o.log.error(
        `another process took the node name ${JSON.stringify(this.self)} while this one was cut off: ` +
          "this node stops publishing itself (restart it with another --node NAME)",
        { other: info.url },
      );
    this.#displacedBy = info.incarnation;
  }

  async #beat(): Promise<void> {
    if (this.#closed || this.#displacedBy) return;
    try {
      this.#revision =
        this.#revision === undefined
          ? await this.#kv.create(this.self, this.#encode())
          : await this.#kv.update(this.self, this.#encode(), this.#revision);
    } catch (err) {
      if (!isWrongSequence(err)) {
        // NATS down or slow: the next beat tries again (the client reconnects by itself).
        this.#o.log.debug("heartbeat not written", { error: toFennecError(err).message });
        return;
      }
      // The key moved on without this node: removed by the bucket's age limit after a long
      // pause (create it again), or written by another process (displaced, see #noticeOwnKey).
      const entry = await this.#kv.get(this.self).catch(() => null);
      if (!entry || entry.operation !== "PUT") {
        this.#revision = undefined;
        this.#revision = await this.#kv.create(this.self, this.#encode()).catch(() => undefined);
      } else if (parse(entry)?.incarnation === this.#incarnation) {
        this.#revision = entry.revision;
      } else {
        this.#noticeOwnKey(entry);
      }
    }
  }

  /** Drops nodes whose entry is older than the TTL. */
  #sweep(): void {
    const now = Date.now();
    const paused = now - this.#lastSweep > PAUSE_MS;
    this.#lastSweep = now;
    // Back from a pause of this very process: the others' refreshes are still in the socket's
    // buffer; judge them at the next sweep, not by a clock that jumped.
    if (paused) return;
    for (const [name, seen] of this.#others) {
      if (now - seen.at < this.#ttlMs || this.#confirming.has(name)) continue;
      this.#confirming.add(name);
      void this.#confirmGone(name, seen).finally(() => this.#confirming.delete(name));
    }
  }

  /**
   * Drops a node whose entry is older than the TTL, after reading its key in the bucket directly.
   * The watch can stall for longer than the TTL while the node keeps writing: when the
   * nats-server holding the watch's consumer dies (one server of a NATS cluster; this node's own
   * connection elsewhere), nats.js notices only after two missed idle heartbeats of its ordered
   * consumer, 30 s apart (e2e/cluster-ha, unit/cluster-membership-stall). A newer revision
   * in the bucket, fresh by the server's time, keeps the node; a read that fails (NATS down)
   * drops it, as before.
   */
  async #confirmGone(name: string, seen: Seen): Promise<void> {
    const entry = await this.#kv.get(name).catch(() => null);
    if (this.#closed || this.#others.get(name) !== seen) return;
    const info = entry?.operation === "PUT" ? parse(entry) : undefined;
    if (entry && info?.url && entry.revision > seen.revision && this.#age(entry) < this.#ttlMs) {
      this.#onEntry(entry, true);
      return;
    }
    this.#others.delete(name);
    this.#o.log.info("a node stopped heartbeating and left the cluster's list", { node: name });
    this.#emit({ type: "left", node: seen.info });
  }

  #emit(event: NodeEvent): void {
    for (const listener of this.#listeners) {
      try {
        listener(event);
      } catch (err) {
        this.#o.log.warn("a cluster listener failed", { error: toFennecError(err).message });
      }
    }
  }
}

/**
 * A node's name is a key of the nodes bucket (a NATS subject token, dots between parts) and the
 * value of a response header: letters, digits, `-`, `_`, dot-separated, as host names are.
 */
export function checkNodeName(name: string): void {
  if (name.length > 253 || !/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/.test(name))
    throw new FennecError(
      "BAD_NAME",
      `a node name is letters, digits, "-" and "_", parts joined by dots (a host name), got ${JSON.stringify(name)}: set --node NAME`,
    );
}

function parse(entry: KvEntry): NodeInfo | undefined {
  try {
    const info = entry.json<NodeInfo>();
    return typeof info === "object" && info !== null && typeof info.name === "string" ? info : undefined;
  } catch {
    return undefined;
  }
}

/** JetStream's answer to a compare-and-set on a revision that is not the latest (10071). */
function isWrongSequence(err: unknown): boolean {
  return /wrong last sequence/i.test((err as Error).message ?? "");
}
