import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { checkReplicas, prepareReplicas } from "../../src/cluster/replicas.js";
import { FennecError } from "../../src/core/errors.js";
import { createLogger } from "../../src/core/log.js";
import { destroyClusterStore, openClusterStore, storeStreams } from "../../src/store/jetstream/open.js";
import { startNats, type TestNats } from "../helpers/nats.js";
import { startNatsCluster, type TestNatsCluster } from "../helpers/nats-cluster.js";

const quiet = createLogger("silent");

/** A logger that keeps its lines, to check what a start says. */
function recording(): { log: ReturnType<typeof createLogger>; lines: string[] } {
  const lines: string[] = [];
  return { log: createLogger("info", (l) => lines.push(l) > 0), lines };
}

const isCode = (code: string) => (err: unknown) => {
  assert.ok(err instanceof FennecError, String(err));
  assert.equal(err.code, code, err.message);
  return true;
};

async function replicasOf(nc: NatsConnection, streams: readonly string[]): Promise<number[]> {
  const jsm = await jetstreamManager(nc);
  return Promise.all(streams.map(async (s) => (await jsm.streams.info(s)).config.num_replicas));
}

describe("--cluster-replicas: the count", () => {
  it("takes 1 to 5, and refuses anything else with CLUSTER_REPLICAS", () => {
    for (const n of [1, 3, 5]) checkReplicas(n);
    for (const n of [0, 6, -1, 1.5, Number.NaN])
      assert.throws(() => checkReplicas(n), isCode("CLUSTER_REPLICAS"));
  });
});

describe("--cluster-replicas on a three-server NATS cluster", () => {
  let cluster: TestNatsCluster;
  let nc: NatsConnection;
  before(async () => {
    cluster = await startNatsCluster(3);
    nc = await cluster.client();
  });
  after(async () => {
    await nc?.close();
    await cluster?.stop();
  });

  it("creates the store with 3 replicas, and brings a store made with 1 to 3 at the next start", async () => {
    const fresh = "rep-fresh";
    const old = "rep-old";
    try {
      const a = await openClusterStore(nc, { prefix: fresh, replicas: 3, log: quiet });
      await a.close();
      assert.deepEqual(await replicasOf(nc, storeStreams(fresh)), [3, 3, 3, 3, 3, 3, 3]);

      const b = await openClusterStore(nc, { prefix: old, log: quiet });
      await b.close();
      assert.deepEqual(await replicasOf(nc, storeStreams(old)), [1, 1, 1, 1, 1, 1, 1]);
      // A node started without the option says the cluster has 1-copy resources, and changes nothing.
      const unset = recording();
      await prepareReplicas(nc, storeStreams(old), undefined, unset.log);
      assert.match(unset.lines.join(""), /--cluster-replicas is not given/);
      assert.deepEqual(await replicasOf(nc, storeStreams(old)), [1, 1, 1, 1, 1, 1, 1]);
      // With the option: every existing one is changed, and the log names each.
      const set = recording();
      await prepareReplicas(nc, storeStreams(old), 3, set.log);
      assert.deepEqual(await replicasOf(nc, storeStreams(old)), [3, 3, 3, 3, 3, 3, 3]);
      for (const s of storeStreams(old))
        assert.match(set.lines.join(""), new RegExp(`"stream":"${s}","from":1,"to":3`));
      const again = await openClusterStore(nc, { prefix: old, replicas: 3, log: quiet });
      await again.close();
    } finally {
      await destroyClusterStore(nc, fresh);
      await destroyClusterStore(nc, old);
    }
  });

  it("refuses more replicas than the cluster has servers with CLUSTER_REPLICAS, new or existing", async () => {
    const prefix = "rep-five";
    try {
      await assert.rejects(
        openClusterStore(nc, { prefix, replicas: 5, log: quiet }),
        isCode("CLUSTER_REPLICAS"),
      );
      const s = await openClusterStore(nc, { prefix, log: quiet });
      await s.close();
      await assert.rejects(prepareReplicas(nc, storeStreams(prefix), 5, quiet), (err: unknown) => {
        isCode("CLUSTER_REPLICAS")(err);
        assert.match((err as Error).message, /no suitable peers/);
        return true;
      });
    } finally {
      await destroyClusterStore(nc, prefix);
    }
  });
});

describe("--cluster-replicas on one nats-server", () => {
  let nats: TestNats;
  before(async () => {
    nats = await startNats();
  });
  after(async () => {
    await nats?.stop();
  });

  it("refuses more than 1 with CLUSTER_REPLICAS before anything is created or changed", async () => {
    const nc = await connect({ servers: nats.url });
    const prefix = "rep-single";
    try {
      const s = await openClusterStore(nc, { prefix, log: quiet });
      await s.close();
      // nats-server 2.9 alone accepts an update to 3 replicas (and keeps one): refused before it.
      await assert.rejects(prepareReplicas(nc, storeStreams(prefix), 3, quiet), isCode("CLUSTER_REPLICAS"));
      assert.deepEqual(await replicasOf(nc, storeStreams(prefix)), [1, 1, 1, 1, 1, 1, 1]);
      // Creating one is refused by the server itself (10074), told the same way.
      await assert.rejects(
        openClusterStore(nc, { prefix: "rep-single-new", replicas: 3, log: quiet }),
        isCode("CLUSTER_REPLICAS"),
      );
      await prepareReplicas(nc, storeStreams(prefix), 1, quiet);
    } finally {
      await destroyClusterStore(nc, prefix);
      await destroyClusterStore(nc, "rep-single-new");
      await nc.close();
    }
  });
});
