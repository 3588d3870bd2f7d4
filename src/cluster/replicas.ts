import { jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { FennecError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { CLUSTER_BUCKETS } from "./contract.js";

/**
 * How many copies of every bucket, stream and object store Fennec keeps on a NATS cluster
 * (`--cluster-replicas N`). JetStream keeps the copies on N servers with RAFT: a write is
 * acknowledged once a majority holds it, so R3 survives the loss of one server, R5 of two.
 * JetStream takes 1 to 5.
 */
export const MAX_REPLICAS = 5;

/** The streams behind the cluster's own buckets (membership, shared functions). */
export const CLUSTER_STREAMS: readonly string[] = [
  `KV_${CLUSTER_BUCKETS.nodes}`,
  `KV_${CLUSTER_BUCKETS.functions}`,
  `OBJ_${CLUSTER_BUCKETS.artefacts}`,
  `KV_${CLUSTER_BUCKETS.cluster}`,
];

/** Throws CLUSTER_REPLICAS unless `n` is a whole number JetStream accepts (1–5). */
export function checkReplicas(n: number): void {
  if (!Number.isInteger(n) || n < 1 || n > MAX_REPLICAS)
    throw new FennecError(
      "CLUSTER_REPLICAS",
      `--cluster-replicas expects a whole number from 1 to ${MAX_REPLICAS} (JetStream's limit), got ${JSON.stringify(n)}`,
    );
}

/**
 * JetStream's answers that mean "the cluster cannot hold that many copies" (nats-server 2.9):
 * 10074 `replicas > 1 not supported in non-clustered mode` (one server), 10005 `no suitable peers
 * for placement` (fewer JetStream servers up than replicas), 10023 `insufficient resources`.
 */
const PLACEMENT_CODES = new Set([10074, 10005, 10023]);
const PLACEMENT_TEXT = /non-clustered mode|no suitable peers|insufficient resources/i;

/**
 * `err` as CLUSTER_REPLICAS when JetStream refused the replica count, else `err` unchanged: a
 * start that asks for more copies than the NATS cluster can hold fails with one clear line.
 */
export function replicaError(err: unknown, replicas: number | undefined, what: string): unknown {
  if (err instanceof FennecError) return err;
  const code = (err as { code?: unknown }).code;
  const message = (err as Error).message ?? String(err);
  if (!PLACEMENT_CODES.has(Number(code)) && !PLACEMENT_TEXT.test(message)) return err;
  return new FennecError(
    "CLUSTER_REPLICAS",
    `JetStream cannot keep ${replicas ?? 1} replica(s) of ${what}: the NATS cluster has fewer JetStream servers up (nats-server: "${message}"); give --cluster-replicas at most the number of servers`,
    { cause: err },
  );
}

/**
 * Checks, before anything is created, that the server can hold `replicas` copies: a single
 * nats-server (no `cluster` block) refuses to create a replicated stream, but accepts an update
 * of an existing one to any count and keeps one copy, so it is refused here by its INFO.
 */
export function checkServerForReplicas(nc: NatsConnection, replicas: number): void {
  if (replicas > 1 && !nc.info?.cluster)
    throw new FennecError(
      "CLUSTER_REPLICAS",
      `--cluster-replicas ${replicas} needs a NATS cluster, but the server at ${nc.getServer()} is not in one (no cluster block in its config): it keeps one copy; give --cluster-replicas 1 or list the servers of a NATS cluster in --cluster`,
    );
}

/** How long a start waits for a stream whose replicas it changed to have a leader and current peers. */
const SETTLE_MS = 60_000;

/** Waits until `stream` has a leader and `replicas - 1` current peers; false after SETTLE_MS. */
async function settle(jsm: JetStreamManager, stream: string, replicas: number): Promise<boolean> {
  const deadline = Date.now() + SETTLE_MS;
  while (Date.now() < deadline) {
    const info = await jsm.streams.info(stream).catch(() => undefined);
    const peers = info?.cluster?.replicas ?? [];
    if (info?.cluster?.leader && peers.length === replicas - 1 && peers.every((p) => p.current)) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

/**
 * Brings each existing stream in `streams` to `replicas` copies (JetStream changes a stream's
 * replicas online, by an update: it adds or removes peers and catches them up). Streams that do
 * not exist yet are left to their creation. Returns what it changed, for the log.
 */
export async function applyReplicas(
  nc: NatsConnection,
  streams: readonly string[],
  replicas: number,
  log: Logger,
): Promise<Array<{ stream: string; from: number }>> {
  const jsm: JetStreamManager = await jetstreamManager(nc);
  const changed: Array<{ stream: string; from: number }> = [];
  for (const stream of streams) {
    let from: number;
    try {
      from = (await jsm.streams.info(stream)).config.num_replicas;
    } catch (err) {
      if (/not found/i.test((err as Error).message)) continue;
      throw err;
    }
    if (from === replicas) continue;
    try {
      await jsm.streams.update(stream, { num_replicas: replicas });
    } catch (err) {
      throw replicaError(err, replicas, stream);
    }
    // The new RAFT group elects a leader and the new peers catch up; until then the stream
    // answers no request (a stream update right after it times out), so the start waits.
    const settled = await settle(jsm, stream, replicas);
    log.warn("changed the replicas of a JetStream stream to --cluster-replicas", {
      stream,
      from,
      to: replicas,
      ...(settled ? {} : { note: `its peers had not caught up after ${SETTLE_MS / 1000} s` }),
    });
    changed.push({ stream, from });
  }
  return changed;
}

/**
 * What a start does about replicas, before anything is created. With `--cluster-replicas N`: the
 * count is checked, the server must be able to hold it, and every existing stream in `streams` is
 * brought to N. Without it: resources are created with 1 copy and existing ones keep theirs; on a
 * NATS cluster the node says so at start (a server's loss would lose a 1-copy bucket).
 */
export async function prepareReplicas(
  nc: NatsConnection,
  streams: readonly string[],
  replicas: number | undefined,
  log: Logger,
): Promise<void> {
  if (replicas !== undefined) {
    checkReplicas(replicas);
    checkServerForReplicas(nc, replicas);
    await applyReplicas(nc, streams, replicas, log);
    return;
  }
  if (!nc.info?.cluster) return;
  const jsm = await jetstreamManager(nc);
  const existing: Record<string, number> = {};
  for (const stream of streams) {
    const info = await jsm.streams.info(stream).catch(() => undefined);
    if (info) existing[stream] = info.config.num_replicas;
  }
  log.warn(
    "the NATS server is in a NATS cluster but --cluster-replicas is not given: buckets and streams created now get 1 copy (the loss of the server holding one loses it), existing ones keep theirs",
    { natsCluster: nc.info.cluster, replicas: existing },
  );
}
