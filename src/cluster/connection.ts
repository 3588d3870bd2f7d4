import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { FennecError } from "../core/errors.js";
import type { Logger } from "../core/log.js";

/** How long the first connection may take before `--cluster` is reported unreachable. */
const CONNECT_TIMEOUT_MS = 5_000;

/**
 * Connects this node to the cluster's NATS server (`--cluster nats://HOST:PORT`, several
 * comma-separated for a NATS cluster) and checks JetStream is there. Fails with one clear
 * CLUSTER_UNREACHABLE line at start; once connected, the client reconnects by itself for as long
 * as it takes (a restarted nats-server), and says so in the log.
 */
export async function connectCluster(
  url: string,
  opts: { readonly node: string; readonly log: Logger },
): Promise<NatsConnection> {
  const servers = url.split(",").map((s) => s.trim());
  for (const server of servers) {
    if (!/^(nats|tls):\/\/[^/\s]+$/.test(server) && !/^[^/\s:]+:\d+$/.test(server))
      throw new FennecError(
        "CLUSTER_UNREACHABLE",
        `--cluster expects nats://HOST:PORT (comma-separated for several servers), got ${JSON.stringify(server)}`,
      );
  }
  let nc: NatsConnection;
  try {
    nc = await connect({
      servers,
      name: `fennec:${opts.node}`,
      timeout: CONNECT_TIMEOUT_MS,
      // The first connection fails fast (a wrong URL is a start-up error); after it, keep trying.
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
    });
  } catch (err) {
    throw new FennecError(
      "CLUSTER_UNREACHABLE",
      `cannot reach the cluster's NATS server at ${url}: ${(err as Error).message}`,
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
      `the NATS server at ${url} has no JetStream (start it with -js): ${(err as Error).message}`,
    );
  }
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === "disconnect") opts.log.warn("lost the cluster's NATS server; reconnecting");
      else if (status.type === "reconnect") opts.log.info("reconnected to the cluster's NATS server");
    }
  })().catch(() => undefined);
  return nc;
}
