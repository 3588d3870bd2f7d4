import { jetstreamManager } from "@nats-io/jetstream";
import { AuthorizationError, connect, type NatsConnection } from "@nats-io/transport-node";
import { FennecError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { clusterTarget, type ClusterAuthOptions } from "./nats-auth.js";

/** How long the first connection may take before `--cluster` is reported unreachable. */
const CONNECT_TIMEOUT_MS = 5_000;

/** Whether the server refused the credentials (NATS's `-ERR 'Authorization Violation'`), not the connection. */
function refusedCredentials(err: unknown): boolean {
  if (err instanceof AuthorizationError) return true;
  const { message, cause } = (err ?? {}) as { message?: unknown; cause?: { message?: unknown } };
  const text = `${typeof message === "string" ? message : ""} ${typeof cause?.message === "string" ? cause.message : ""}`;
  return /authorization violation|authentication (expired|revoked)|user authentication/i.test(text);
}

/**
 * Connects this node to the cluster's NATS server (`--cluster nats://HOST:PORT`, several
 * comma-separated for a NATS cluster; credentials in the URL or in files: nats-auth.ts) and checks
 * JetStream is there. Fails at start with one clear line: CLUSTER_AUTH when the server refuses the
 * credentials, CLUSTER_UNREACHABLE otherwise; no message carries a credential. Once connected, the
 * client reconnects by itself for as long as it takes (a restarted nats-server), and says so in
 * the log.
 */
export async function connectCluster(
  url: string,
  opts: { readonly node: string; readonly log: Logger; readonly auth?: ClusterAuthOptions },
): Promise<NatsConnection> {
  const target = await clusterTarget(url, opts.auth);
  const { display } = target;
  for (const file of target.exposedFiles)
    opts.log.warn(`${file} can be read by other users of this host: chmod 600 it`);
  let nc: NatsConnection;
  try {
    nc = await connect({
      ...target.options,
      servers: target.servers,
      name: `fennec:${opts.node}`,
      timeout: CONNECT_TIMEOUT_MS,
      // The first connection fails fast (a wrong URL is a start-up error); after it, keep trying.
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
    });
  } catch (err) {
    if (refusedCredentials(err))
      throw new FennecError(
        "CLUSTER_AUTH",
        `the cluster's NATS server at ${display} refused this node's credentials (${(err as Error).message}): check the user and password or token in --cluster, --cluster-creds or --cluster-token-file`,
      );
    throw new FennecError(
      "CLUSTER_UNREACHABLE",
      `cannot reach the cluster's NATS server at ${display}: ${(err as Error).message}`,
    );
  }
  try {
    // JetStream is what a cluster needs (queues, buckets): a server started without -js is refused here.
    const jsm = await jetstreamManager(nc, { timeout: CONNECT_TIMEOUT_MS });
    await jsm.getAccountInfo();
  } catch (err) {
    await nc.close().catch(() => undefined);
    throw new FennecError(
      "CLUSTER_UNREACHABLE",
      `the NATS server at ${display} has no JetStream for this node's account (start it with -js; a user of an account without JetStream gets none): ${(err as Error).message}`,
    );
  }
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === "disconnect") opts.log.warn("lost the cluster's NATS server; reconnecting");
      else if (status.type === "reconnect") opts.log.info("reconnected to the cluster's NATS server");
      else if (status.type === "error" && refusedCredentials(status.error))
        // After a restart with other credentials the client keeps trying; the operator must know why.
        opts.log.error("the cluster's NATS server refuses this node's credentials; retrying");
    }
  })().catch(() => undefined);
  return nc;
}
