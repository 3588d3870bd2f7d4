import { join } from "node:path";
import { Kvm, type KV, type KvEntry } from "@nats-io/kv";
import type { NatsConnection, QueuedIterator } from "@nats-io/transport-node";
import { Objm, type ObjectStore } from "@nats-io/obj";
import type { FunctionConfig } from "../config/function-config.js";
import { FennecError, toFennecError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { isValidName } from "../core/names.js";
import { functionKey, type FunctionId } from "../core/types.js";
import { KeyedMutex } from "../registry/atomic-write.js";
import type { DeployCheck, DirectoryRegistry, RegistryChange } from "../registry/registry.js";
import { MAX_ARTEFACT_BYTES, packFunction, readFunctionFiles, unpackFunction } from "./artefact.js";
import { CLUSTER_BUCKETS, type SharedFunction } from "./contract.js";
import { onServerLost } from "./server-loss.js";
import { SharedBaseline } from "./shared-baseline.js";

/**
 * Functions across nodes (docs/cluster.md, "Functions across nodes"). A deploy, upload or delete
 * made through any node's API is published: the function's files as a tar in the artefacts object
 * store, then its `SharedFunction` in the functions bucket, written with compare-and-set so two
 * nodes deploying at once cannot overwrite one another unseen. Every node watches the bucket and
 * brings its registry to what the bucket holds, through the registry's own checked, atomic swap.
 *
 * One rule settles every disagreement, at a join as in steady state: **the later deploy wins**,
 * ordered by (`deployedAt`, `deployedBy`, revision). A node's copy is as old as the deploy it came
 * from: an API deploy is stamped when it is made (never earlier than the revision this node last
 * agreed on), an installed revision keeps its stamp, and a function of `-r DIR` never shared is as
 * old as its newest file. A function the cluster lacks is published, unless this node's copy came
 * from the cluster and is unchanged since (or older than the cluster's delete): the cluster deleted
 * it while this node was not looking, and it is deleted here too.
 */
export interface FunctionShareOptions {
  readonly nc: NatsConnection;
  /** This node's name (`deployedBy`). */
  readonly node: string;
  readonly registry: DirectoryRegistry;
  readonly log: Logger;
  /** The check a function shared by another node must pass here before it goes live. */
  readonly check: (what: string) => DeployCheck;
  /** A revision from another node is live here: calls go to it, instances of the old one retire. */
  readonly installed: (config: FunctionConfig) => void;
  /** Another node's delete has removed the function here: its instances stop, its figures go. */
  readonly removed: (key: string) => Promise<void>;
  /** Copies of the bucket and the object store on a NATS cluster, when created (`--cluster-replicas`; default 1). */
  readonly replicas?: number | undefined;
}

/** The `origin` of the registry changes this module makes (they are not published again). */
const CLUSTER_ORIGIN = "cluster";
/** An artefact younger than this is never collected: a deploy may have put it and not yet named it. */
const ARTEFACT_GRACE_MS = 60_000;
/** After a failure to reach NATS, a function's sync is tried again this often. */
const RETRY_MS = 2_000;
const REVISION = /^[0-9a-f]{32}$/;

/** This node's copy of a function, and which deploy it is (a tombstone while a local delete is unpublished). */
interface LocalCopy {
  readonly revision: string;
  readonly deployedAt: number;
  readonly deployedBy: string;
  readonly deleted?: boolean;
}

type Outcome = "done" | "conflict";

/** `user/name` -> `user.name`, the bucket's key (names hold no dot). */
function sharedKey(id: FunctionId): string {
  return `${id.user}.${id.name}`;
}

function idOfKey(key: string): FunctionId | undefined {
  const [user, name, ...rest] = key.split(".");
  if (rest.length > 0 || !user || !name || !isValidName(user) || !isValidName(name)) return undefined;
  return { user, name };
}

/** Whether `a` is a later deploy than `b`: by time, then node name, then revision (every node orders alike). */
function later(a: Omit<LocalCopy, "deleted">, b: Omit<LocalCopy, "deleted">): boolean {
  if (a.deployedAt !== b.deployedAt) return a.deployedAt > b.deployedAt;
  if (a.deployedBy !== b.deployedBy) return a.deployedBy > b.deployedBy;
  return a.revision > b.revision;
}

/** A compare-and-set that lost: another node wrote the key since it was read. */
function isConflict(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown };
  return e.code === 10071 || /wrong last sequence|key exists/i.test(String(e.message));
}

function parseShared(entry: KvEntry, key: string): SharedFunction | undefined {
  try {
    const v = entry.json<Partial<SharedFunction>>();
    if (
      typeof v.function === "string" &&
      typeof v.revision === "string" &&
      REVISION.test(v.revision) &&
      v.artefact === `${key}@${v.revision}` &&
      typeof v.deployedBy === "string" &&
      typeof v.deployedAt === "number" &&
      Number.isFinite(v.deployedAt)
    )
      return v as SharedFunction;
  } catch {
    // not JSON: reported below
  }
  return undefined;
}

export class FunctionShare {
  readonly #o: FunctionShareOptions;
  readonly #kv: KV;
  readonly #obj: ObjectStore;
  readonly #baseline: SharedBaseline;
  readonly #local = new Map<string, LocalCopy>();
  /** Revisions this node refused (its check, a bad artefact): told once, not retried until a new one. */
  readonly #refused = new Map<string, string>();
  readonly #mutex = new KeyedMutex();
  readonly #queued = new Set<string>();
  readonly #running = new Set<Promise<void>>();
  readonly #timers = new Set<NodeJS.Timeout>();
  readonly #failing = new Set<string>();
  /** The latest `deployedAt` this node has read in the bucket, per function. */
  readonly #seenAt = new Map<string, number>();
  #watcher: QueuedIterator<KvEntry> | undefined;
  #stopListening: () => void = () => undefined;
  #stopServerLoss: () => void = () => undefined;
  #closing = false;

  private constructor(o: FunctionShareOptions, kv: KV, obj: ObjectStore, baseline: SharedBaseline) {
    this.#o = o;
    this.#kv = kv;
    this.#obj = obj;
    this.#baseline = baseline;
  }

  /**
   * Joins: opens (or creates) the bucket and the object store, then brings this node and the
   * cluster into agreement on every function either has (installing, publishing or deleting as
   * the rule says), and watches the bucket from then on. Resolves once the join is done, so a
   * node serves only after it has caught up.
   */
  static async start(o: FunctionShareOptions): Promise<FunctionShare> {
    const replicas = o.replicas ?? 1;
    const kv = await new Kvm(o.nc).create(CLUSTER_BUCKETS.functions, { history: 1, replicas });
    const obj = await new Objm(o.nc).create(CLUSTER_BUCKETS.artefacts, { replicas });
    const baseline = await SharedBaseline.load(join(o.registry.root, ".fennec", "cluster", "functions.json"));
    const share = new FunctionShare(o, kv, obj, baseline);
    await share.#join();
    return share;
  }

  async #join(): Promise<void> {
    // Changes through this node's API from now on are published.
    this.#stopListening = this.#o.registry.onChange((change) => this.#onChange(change));
    for (const entry of await this.#o.registry.list()) {
      if (entry.error?.code === "BAD_NAME" || this.#o.registry.dirOf(entry.id) !== entry.dir) continue;
      const key = sharedKey(entry.id);
      const fn = await this.#o.registry.inspect(entry.id, async (dir) =>
        dir ? readFunctionFiles(dir) : undefined,
      );
      if (!fn) continue;
      const base = this.#baseline.get(key);
      this.#local.set(
        key,
        base?.revision === fn.revision
          ? { revision: fn.revision, deployedAt: base.deployedAt, deployedBy: base.deployedBy }
          : { revision: fn.revision, deployedAt: Math.floor(fn.newestMtimeMs), deployedBy: this.#o.node },
      );
    }
    // Watch first, then list: a change made between the two is seen by the watch.
    this.#watcher = await this.#kv.watch();
    void this.#watch(this.#watcher);
    // Its consumer may have lived on a lost server of the NATS cluster: re-opened at once.
    this.#stopServerLoss = onServerLost(this.#o.nc, () => void this.#rewatch());
    const keys = new Set([...this.#local.keys(), ...this.#baseline.keys()]);
    for await (const key of await this.#kv.keys()) keys.add(key);
    await Promise.all([...keys].map((key) => this.#mutex.run(key, () => this.#syncLogged(key))));
    void this.#collectArtefacts().catch((err: unknown) =>
      this.#o.log.warn("could not collect old function artefacts", { error: toFennecError(err).message }),
    );
  }

  /**
   * A new watch in place of the current one (retried every second while JetStream has no leader
   * for the bucket yet). It replays every key: each is synced again, which is a no-op for a
   * function this node already agrees on.
   */
  async #rewatch(): Promise<void> {
    this.#watcher?.stop();
    while (!this.#closing) {
      try {
        this.#watcher = await this.#kv.watch();
        void this.#watch(this.#watcher);
        return;
      } catch {
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
  }

  async #watch(watcher: QueuedIterator<KvEntry>): Promise<void> {
    try {
      for await (const entry of watcher) this.#schedule(entry.key);
    } catch (err) {
      if (!this.#closing)
        this.#o.log.warn("lost the watch of shared functions", { error: toFennecError(err).message });
    }
  }

  /** A registry change: one made through this node's API is published (in the background, in order). */
  async #onChange(change: RegistryChange): Promise<void> {
    if (change.origin === CLUSTER_ORIGIN || this.#closing) return;
    const key = sharedKey(change.id);
    // An API deploy is newer than anything this node has seen of the function (a revision it
    // refused included), whatever the clocks say: what its caller was told went live stays live.
    const deployedAt = Math.max(
      Date.now(),
      (this.#baseline.get(key)?.deployedAt ?? 0) + 1,
      (this.#seenAt.get(key) ?? 0) + 1,
    );
    if (change.type === "removed") {
      this.#local.set(key, { revision: "", deployedAt, deployedBy: this.#o.node, deleted: true });
    } else {
      try {
        // Read under the function's lock: the digest is of exactly this deploy.
        const fn = await readFunctionFiles(change.dir);
        this.#local.set(key, { revision: fn.revision, deployedAt, deployedBy: this.#o.node });
      } catch (err) {
        this.#o.log.warn("a deploy cannot be shared with the other nodes", {
          function: change.key,
          error: toFennecError(err).message,
        });
        return;
      }
    }
    this.#schedule(key);
  }

  /** Queues a sync of one function (several events while one runs make one more run). */
  #schedule(key: string): void {
    if (this.#closing || this.#queued.has(key)) return;
    this.#queued.add(key);
    const run: Promise<void> = this.#mutex
      .run(key, async () => {
        this.#queued.delete(key);
        if (!this.#closing) await this.#sync(key);
      })
      .then(
        () => {
          if (this.#failing.delete(key))
            this.#o.log.info("shared functions: in agreement again", { function: key });
        },
        (err: unknown) => {
          this.#queued.delete(key);
          if (this.#closing) return;
          // NATS unreachable (a restart): try again until it is back, saying so once.
          if (!this.#failing.has(key)) {
            this.#failing.add(key);
            this.#o.log.warn("shared functions: cannot sync with the cluster, retrying", {
              function: key,
              error: toFennecError(err).message,
            });
          }
          const timer = setTimeout(() => {
            this.#timers.delete(timer);
            this.#schedule(key);
          }, RETRY_MS);
          this.#timers.add(timer);
        },
      )
      .finally(() => this.#running.delete(run));
    this.#running.add(run);
  }

  async #syncLogged(key: string): Promise<void> {
    try {
      await this.#sync(key);
    } catch (err) {
      this.#o.log.warn("shared functions: cannot sync at join", {
        function: key,
        error: toFennecError(err).message,
      });
      this.#schedule(key);
    }
  }

  async #sync(key: string): Promise<void> {
    // A lost compare-and-set re-reads and decides again; the later deploy wins in the end.
    for (let attempt = 0; attempt < 20; attempt++) {
      if ((await this.#syncOnce(key)) === "done") return;
    }
    throw new FennecError("INTERNAL", `${key}: still losing compare-and-set after 20 attempts`);
  }

  /** Brings one function here and in the bucket into agreement, as the rule in the header says. */
  async #syncOnce(key: string): Promise<Outcome> {
    const id = idOfKey(key);
    if (!id) return "done";
    const entry = await this.#kv.get(key);
    const local = this.#local.get(key);
    const base = this.#baseline.get(key);
    if (entry?.operation === "PUT") {
      const shared = parseShared(entry, key);
      if (!shared) {
        this.#o.log.warn("ignored a shared function that is not a valid record", { key });
        return "done";
      }
      this.#seenAt.set(key, Math.max(this.#seenAt.get(key) ?? 0, shared.deployedAt));
      if (local && !local.deleted && local.revision === shared.revision) {
        this.#local.set(key, {
          revision: shared.revision,
          deployedAt: shared.deployedAt,
          deployedBy: shared.deployedBy,
        });
        if (base?.revision !== shared.revision || base.deployedAt !== shared.deployedAt)
          await this.#baseline.set(key, shared);
        return "done";
      }
      if (!local || later(shared, local)) return this.#install(id, key, shared);
      if (local.deleted) return this.#unpublish(key, entry.revision);
      return this.#publish(id, key, local, entry.revision);
    }
    // The cluster has no such function (never had, or a delete marker).
    if (!local) {
      await this.#baseline.set(key, undefined);
      return "done";
    }
    if (local.deleted) {
      this.#local.delete(key);
      await this.#baseline.set(key, undefined);
      return "done";
    }
    const shared = base !== undefined;
    const unchanged = shared && base.revision === local.revision;
    const deletedLater = shared && entry !== null && entry.created.getTime() > local.deployedAt;
    if (unchanged || deletedLater) return this.#removeHere(id, key);
    return this.#publish(id, key, local, entry?.revision ?? 0);
  }

  /** Publishes this node's copy: the artefact first, then the record, compare-and-set on `seq`. */
  async #publish(id: FunctionId, key: string, local: LocalCopy, seq: number): Promise<Outcome> {
    const fn = await this.#o.registry.inspect(id, async (dir) => (dir ? readFunctionFiles(dir) : undefined));
    // Changed since (a later deploy here): its own event publishes that one.
    if (!fn || fn.revision !== local.revision) return "done";
    try {
      await this.#o.registry.resolve(id);
    } catch (err) {
      this.#o.log.warn("not shared with the other nodes: its function.toml does not load here", {
        function: functionKey(id),
        error: toFennecError(err).message,
      });
      return "done";
    }
    if (fn.leftOut.length > 0)
      this.#o.log.warn("shared without some of its files (links and special files are not shared)", {
        function: functionKey(id),
        paths: fn.leftOut.slice(0, 20),
      });
    const artefact = `${key}@${fn.revision}`;
    // Put again even when present: its mtime restarts, so no collection removes it before the record names it.
    await this.#obj.putBlob({ name: artefact }, packFunction(fn));
    const value: SharedFunction = {
      function: functionKey(id),
      revision: fn.revision,
      artefact,
      deployedBy: local.deployedBy,
      deployedAt: local.deployedAt,
    };
    try {
      if (seq === 0) await this.#kv.create(key, JSON.stringify(value));
      else await this.#kv.update(key, JSON.stringify(value), seq);
    } catch (err) {
      if (isConflict(err)) return "conflict";
      throw err;
    }
    await this.#baseline.set(key, value);
    this.#o.log.info("shared a function with the other nodes", {
      function: value.function,
      revision: value.revision,
    });
    void this.#collectArtefacts(key).catch(() => undefined);
    return "done";
  }

  /** Publishes a delete made here: the record goes (compare-and-set), and its artefacts after a grace. */
  async #unpublish(key: string, seq: number): Promise<Outcome> {
    try {
      await this.#kv.delete(key, { previousSeq: seq });
    } catch (err) {
      if (isConflict(err)) return "conflict";
      throw err;
    }
    this.#local.delete(key);
    await this.#baseline.set(key, undefined);
    this.#o.log.info("deleted a function on every node", { key });
    void this.#collectArtefacts(key).catch(() => undefined);
    return "done";
  }

  /** Installs a revision another node shared, if it passes this node's check; otherwise keeps what is here. */
  async #install(id: FunctionId, key: string, shared: SharedFunction): Promise<Outcome> {
    if (this.#refused.get(key) === shared.revision) return "done";
    const what = `${functionKey(id)} revision ${shared.revision} from node ${shared.deployedBy}`;
    let config: FunctionConfig;
    try {
      // Weighed before it is read: a node holds an artefact in memory whole.
      const info = await this.#obj.info(shared.artefact);
      if (info && info.size > MAX_ARTEFACT_BYTES + 2 ** 20)
        throw new FennecError("ARTEFACT_INVALID", `${shared.artefact} is larger than a node accepts`);
      const tar = info ? await this.#obj.getBlob(shared.artefact) : null;
      if (!tar)
        throw new FennecError(
          "ARTEFACT_INVALID",
          `${shared.artefact} is not in ${CLUSTER_BUCKETS.artefacts}`,
        );
      const fn = await unpackFunction(tar);
      if (fn.revision !== shared.revision)
        throw new FennecError(
          "ARTEFACT_INVALID",
          `the files of ${shared.artefact} are not revision ${shared.revision}`,
        );
      config = await this.#o.registry.install(id, fn.files, this.#o.check(what), CLUSTER_ORIGIN);
    } catch (err) {
      // A NATS failure is tried again; a refusal (the artefact, the check) is final for this revision.
      if (!(err instanceof FennecError)) throw err;
      this.#refused.set(key, shared.revision);
      this.#o.log.warn("refused a function shared by another node; this node keeps what it has", {
        function: functionKey(id),
        revision: shared.revision,
        from: shared.deployedBy,
        code: err.code,
        error: err.message,
      });
      return "done";
    }
    this.#refused.delete(key);
    this.#local.set(key, {
      revision: shared.revision,
      deployedAt: shared.deployedAt,
      deployedBy: shared.deployedBy,
    });
    await this.#baseline.set(key, shared);
    this.#o.installed(config);
    this.#o.log.info("installed a function shared by another node", {
      function: functionKey(id),
      revision: shared.revision,
      from: shared.deployedBy,
    });
    return "done";
  }

  /** The cluster deleted the function: so does this node. */
  async #removeHere(id: FunctionId, key: string): Promise<Outcome> {
    try {
      await this.#o.registry.remove(id, CLUSTER_ORIGIN);
    } catch (err) {
      if (toFennecError(err).code !== "FUNCTION_NOT_FOUND") throw err;
    }
    this.#local.delete(key);
    this.#refused.delete(key);
    await this.#baseline.set(key, undefined);
    await this.#o.removed(functionKey(id));
    this.#o.log.info("removed a function another node deleted", { function: functionKey(id) });
    return "done";
  }

  /**
   * Removes artefacts no record names (of one function, or of all), once older than the grace: a
   * node mid-download of a revision just replaced finds it gone and re-reads the record.
   */
  async #collectArtefacts(key?: string): Promise<void> {
    const named = new Map<string, string | undefined>();
    for (const info of await this.#obj.list()) {
      const owner = info.name.slice(0, Math.max(0, info.name.lastIndexOf("@")));
      if (key !== undefined && owner !== key) continue;
      if (Date.now() - Date.parse(info.mtime) < ARTEFACT_GRACE_MS) continue;
      if (!named.has(owner)) {
        const entry = owner ? await this.#kv.get(owner) : null;
        named.set(owner, entry?.operation === "PUT" ? parseShared(entry, owner)?.artefact : undefined);
      }
      if (named.get(owner) !== info.name) await this.#obj.delete(info.name);
    }
  }

  /** Stops watching and publishing; waits for a sync under way (an install finishes whole). */
  async close(): Promise<void> {
    this.#closing = true;
    this.#stopListening();
    this.#stopServerLoss();
    this.#watcher?.stop();
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
    await Promise.allSettled([...this.#running]);
  }
}
