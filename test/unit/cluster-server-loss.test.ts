import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { createLogger } from "../../src/core/log.js";
import type { NewAsyncCall } from "../../src/store/contract.js";
import type { JetStreamStore } from "../../src/store/jetstream/jetstream-store.js";
import { destroyClusterStore, openClusterStore } from "../../src/store/jetstream/open.js";
import { startNatsCluster, type TestNatsCluster } from "../helpers/nats-cluster.js";
import { waitFor } from "../helpers/wait.js";

const quiet = createLogger("silent");
const PREFIX = "loss";
const CALLS = `KV_${PREFIX}-calls`;

const newCall = (): NewAsyncCall => ({
  id: randomUUID(),
  function: "default/echo",
  request: { method: "POST", path: "/", query: "", headers: {}, body: new Uint8Array(0) },
  submittedAt: Date.now(),
});

describe("the calls mirror when the nats-server holding its watch dies (three-server NATS cluster)", () => {
  let cluster: TestNatsCluster;
  const connections: NatsConnection[] = [];
  const stores: JetStreamStore[] = [];
  before(async () => {
    cluster = await startNatsCluster(3);
  });
  after(async () => {
    for (const s of stores) await s.close().catch(() => undefined);
    const nc = await cluster?.client();
    if (nc) {
      await destroyClusterStore(nc, PREFIX).catch(() => undefined);
      await nc.close();
    }
    for (const nc of connections) await nc.close().catch(() => undefined);
    await cluster?.stop();
  });

  it("re-opens the watch at once (the client's update status), not after its missed heartbeats", async (t) => {
    const admin = await cluster.client();
    connections.push(admin);
    const jsm = await jetstreamManager(admin);
    const created = await openClusterStore(admin, { prefix: PREFIX, replicas: 3, log: quiet });
    await created.close();

    // A store whose watch consumer lives on another server than the one its client is connected
    // to: the case a reconnect does not cover. Consumers are placed by JetStream: try each server.
    const hostOf = async (before: ReadonlySet<string>) => {
      for await (const c of jsm.consumers.list(CALLS))
        if (!before.has(c.name)) return { name: c.name, host: c.cluster?.leader ?? "" };
      return undefined;
    };
    let watched: { store: JetStreamStore; host: string; via: string } | undefined;
    for (let i = 0; !watched && i < 6; i++) {
      const via = cluster.servers[i % 3]!;
      const known = new Set<string>();
      for await (const c of jsm.consumers.list(CALLS)) known.add(c.name);
      const nc = await connect({ servers: via.url });
      connections.push(nc);
      const store = await openClusterStore(nc, { prefix: PREFIX, replicas: 3, log: quiet });
      stores.push(store);
      const consumer = await waitFor("the store's watch consumer", () => hostOf(known));
      if (consumer.host && consumer.host !== via.name)
        watched = { store, host: consumer.host, via: via.name };
    }
    assert.ok(watched, "no store had its watch on another server than its connection's");

    // The server holding the watch dies; a call is accepted through another client.
    await cluster.server(watched.host).kill();
    const writer = await connect({
      servers: cluster.servers.filter((s) => s.name !== watched.host).map((s) => s.url),
    });
    connections.push(writer);
    const b = await waitFor("a store on the surviving servers", () =>
      openClusterStore(writer, { prefix: PREFIX, log: quiet }),
    );
    stores.push(b);
    const call = newCall();
    await waitFor("the call accepted", () => b.enqueue(call).then(() => true));
    const since = Date.now();

    // Its mirror (a scan, no fallback read) sees the call well before the minute a stalled watch takes.
    await waitFor(
      `the call in the mirror of the store connected to ${watched.via}`,
      async () => ((await watched.store.queueFigures()).get("default/echo")?.queued ?? 0) >= 1,
      { timeoutMs: 30_000, intervalMs: 100 },
    );
    t.diagnostic(
      `seen ${Date.now() - since} ms after it was accepted (watch on ${watched.host}, client on ${watched.via})`,
    );
  });
});
