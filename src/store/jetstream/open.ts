import {
  jetstream,
  jetstreamManager,
  RetentionPolicy as StreamRetention,
  StorageType,
  type JetStreamManager,
} from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { Objm } from "@nats-io/obj";
import { nanos, type NatsConnection } from "@nats-io/transport-node";
import { FennecError } from "../../core/errors.js";
import type { Logger } from "../../core/log.js";
import { replicaError } from "../../cluster/replicas.js";
import { onServerLost } from "../../cluster/server-loss.js";
import type { RetentionPolicy } from "../contract.js";
import { Blobs } from "./blobs.js";
import { JetStreamStore } from "./jetstream-store.js";
import { storeNames } from "./names.js";

export interface ClusterStoreOptions {
  readonly log?: Logger | undefined;
  /** What the resources are named from (default `fennec`); tests give each case its own. */
  readonly prefix?: string | undefined;
  /**
   * Log lines older than the age, or beyond the bytes, are dropped by nats-server itself (the
   * stream's max_age and max_bytes, oldest first), so a cluster where no node prunes for a while
   * still forgets old lines. Calls are pruned by the nodes
   * (`prune`): a bucket's max_age would drop queued calls too.
   */
  readonly retention?: RetentionPolicy | undefined;
  /**
   * Copies of each bucket and stream on a NATS cluster, given to those this call creates
   * (`--cluster-replicas`; default 1). Existing ones are brought to the count before the store
   * opens (`applyReplicas`, src/cluster/replicas.ts).
   */
  readonly replicas?: number | undefined;
}

/**
 * Creates a stream unless it exists (then its limits are brought to what is asked). A byte limit
 * reserves that much of the server's storage: when the server cannot reserve it, the stream goes
 * on without one (said in the log) and pruning alone bounds it.
 */
async function ensureStream(
  jsm: JetStreamManager,
  name: string,
  subjects: string[],
  limits: { readonly maxAgeMs: number; readonly maxBytes: number },
  log: Logger | undefined,
  replicas: number,
): Promise<void> {
  let exists = true;
  try {
    await jsm.streams.info(name);
  } catch (err) {
    if (!/not found/i.test((err as Error).message)) throw err;
    exists = false;
  }
  const apply = async (maxBytes: number): Promise<void> => {
    const max_age = limits.maxAgeMs > 0 ? nanos(limits.maxAgeMs) : 0;
    const max_bytes = maxBytes > 0 ? maxBytes : -1;
    if (exists) {
      await jsm.streams.update(name, { max_age, max_bytes });
      return;
    }
    const config = {
      name,
      subjects,
      storage: StorageType.File,
      retention: StreamRetention.Limits,
      max_age,
      max_bytes,
      allow_direct: true,
      num_replicas: replicas,
    };
    await jsm.streams.add(config).catch(async (e: unknown) => {
      // Another node created it meanwhile: bring its limits to these.
      if (!/already in use|exists/i.test((e as Error).message)) throw e;
      await jsm.streams.update(name, { max_age, max_bytes });
    });
  };
  try {
    await apply(limits.maxBytes);
  } catch (err) {
    if (limits.maxBytes <= 0 || !/insufficient|resources/i.test((err as Error).message)) throw err;
    log?.warn(
      "the cluster's store: nats-server cannot reserve the byte limit for a stream; pruning alone bounds it",
      {
        stream: name,
        maxBytes: limits.maxBytes,
        error: (err as Error).message,
      },
    );
    await apply(0);
  }
}

/**
 * Opens the cluster's invocation store on the node's NATS connection: the buckets and streams
 * are created by whichever node comes first (creating one that exists with the same settings
 * opens it). Resolves once every call is loaded; fails with STORE_UNAVAILABLE, naming the store.
 */
export async function openClusterStore(
  nats: NatsConnection,
  options: ClusterStoreOptions = {},
): Promise<JetStreamStore> {
  const prefix = options.prefix ?? "fennec";
  const names = storeNames(prefix);
  const describe = `jetstream:${prefix}@${nats.getServer()}`;
  try {
    const js = jetstream(nats);
    const jsm = await jetstreamManager(nats);
    const kvm = new Kvm(js);
    // One value per key: a call's, a payload's or a state value's history is not kept.
    const replicas = options.replicas ?? 1;
    const kv = (name: string) => kvm.create(name, { history: 1, storage: StorageType.File, replicas });
    const [calls, payloads, idempotency, state] = await Promise.all([
      kv(names.calls),
      kv(names.payloads),
      kv(names.idempotency),
      kv(names.state),
    ]);
    const objects = await new Objm(js).create(names.blobs, { storage: StorageType.File, replicas });
    await ensureStream(
      jsm,
      names.logs,
      [names.logFilter],
      { maxAgeMs: options.retention?.maxAgeMs ?? 0, maxBytes: options.retention?.maxBytes ?? 0 },
      options.log,
      replicas,
    );
    await ensureStream(
      jsm,
      names.appended,
      [`${prefix}.appended.>`],
      { maxAgeMs: 0, maxBytes: 0 },
      options.log,
      replicas,
    );
    const store = await JetStreamStore.open({
      js,
      jsm,
      names,
      describe,
      log: options.log,
      buckets: { calls, payloads, idempotency, state, blobs: new Blobs(objects) },
    });
    // The watch of the calls may have lived on a lost server: re-opened at once, not in a minute.
    onServerLost(nats, () => store.rewatch());
    return store;
  } catch (caught) {
    const err = replicaError(caught, options.replicas, `the cluster's store ${describe}`);
    if (err instanceof FennecError) throw err;
    throw new FennecError(
      "STORE_UNAVAILABLE",
      `cannot open the cluster's store ${describe}: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
}

/** Removes every bucket and stream of a store (tests; an operator resetting a cluster). */
export async function destroyClusterStore(nats: NatsConnection, prefix: string): Promise<void> {
  const jsm = await jetstreamManager(nats);
  await Promise.all(storeStreams(prefix).map((s) => jsm.streams.delete(s).catch(() => undefined)));
}

/** The JetStream streams behind a store's buckets, object store and streams. */
export function storeStreams(prefix: string): string[] {
  const names = storeNames(prefix);
  return [
    `KV_${names.calls}`,
    `KV_${names.payloads}`,
    `KV_${names.idempotency}`,
    `KV_${names.state}`,
    `OBJ_${names.blobs}`,
    names.logs,
    names.appended,
  ];
}
