/**
 * The cluster's forwarding key (forward-auth.ts): 32 random bytes made once, by the first node
 * that finds none, and kept in NATS, where every member reads it at start. So being able to use
 * the cluster's NATS account is being a member, with nothing else to distribute: whoever can
 * read the key could already publish functions to every node through the functions bucket.
 *
 * Rotating it: delete the key (`nats kv del fennec-cluster forward-key`) and restart the nodes;
 * the first to start makes a new one. Nodes started before and after disagree until then, and
 * refuse each other's forwarded calls (403 FORWARD_UNAUTHENTICATED), so restart them together.
 */
import { randomBytes } from "node:crypto";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { CLUSTER_BUCKETS } from "./contract.js";

const KEY = "forward-key";

/** Reads the forwarding key from NATS, making it if no node has yet (the first create wins). */
export async function clusterForwardKey(nc: NatsConnection, replicas: number | undefined): Promise<Buffer> {
  // Copies as every other bucket (`--cluster-replicas`): a lost key would split the cluster.
  const kv = await new Kvm(nc).create(CLUSTER_BUCKETS.cluster, { history: 1, replicas: replicas ?? 1 });
  for (let tries = 0; ; tries++) {
    const entry = await kv.get(KEY);
    if (entry && entry.operation === "PUT" && entry.value.length > 0) {
      const key = Buffer.from(entry.string(), "base64url");
      if (key.length >= 32) return key;
    }
    const made = randomBytes(32);
    try {
      // create() fails if another node made one first (or a deleted key came back): read theirs.
      if (entry && entry.operation === "PUT")
        await kv.update(KEY, made.toString("base64url"), entry.revision);
      else await kv.create(KEY, made.toString("base64url"));
      return made;
    } catch (err) {
      if (tries >= 5) throw err;
    }
  }
}
