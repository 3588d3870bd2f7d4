import { randomBytes } from "node:crypto";
import { after } from "node:test";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import type { InvocationStore } from "../../src/store/contract.js";
import { destroyClusterStore, openClusterStore } from "../../src/store/jetstream/open.js";
import { startNats, type TestNats } from "../helpers/nats.js";
import { runStoreConformance } from "./store.js";

// One nats-server for the file; each case its own resources (a prefix), removed after it.
let nats: TestNats | undefined;
const server = async (): Promise<TestNats> => (nats ??= await startNats());
after(async () => {
  await nats?.stop();
});

const client = async (): Promise<NatsConnection> =>
  connect({ servers: (await server()).url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });

// `reopen` is another process's view: a new client (a new connection) on the same server.
runStoreConformance("jetstream", async () => {
  const prefix = `t${randomBytes(6).toString("hex")}`;
  let nc = await client();
  let current: InvocationStore = await openClusterStore(nc, { prefix });
  return {
    store: current,
    reopen: async () => {
      await current.close();
      await nc.close();
      nc = await client();
      current = await openClusterStore(nc, { prefix });
      return current;
    },
    cleanup: async () => {
      await current.close();
      await destroyClusterStore(nc, prefix);
      await nc.close();
    },
  };
});
