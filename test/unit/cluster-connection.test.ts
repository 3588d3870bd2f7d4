import assert from "node:assert/strict";
import { createServer } from "node:net";
import { after, before, describe, it } from "node:test";
import { connectCluster } from "../../src/cluster/connection.js";
import { FennecError } from "../../src/core/errors.js";
import { createLogger } from "../../src/core/log.js";
import { startNats, type TestNats } from "../helpers/nats.js";
import { waitFor } from "../helpers/wait.js";

const log = createLogger("silent");

/** A loopback port nothing listens on (taken, then given back). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const { port } = server.address() as { port: number };
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

describe("cluster connection (a real nats-server)", () => {
  let nats: TestNats;
  before(async () => {
    nats = await startNats();
  });
  after(async () => {
    await nats?.stop();
  });

  it("connects to a server with JetStream, and reconnects after it restarts", async () => {
    const nc = await connectCluster(nats.url, { node: "a", log });
    try {
      await nats.restart();
      // The client reconnects by itself: a round trip gets through again.
      await waitFor("a round trip after the restart", () => nc.flush().then(() => true));
      assert.equal(nc.isClosed(), false);
    } finally {
      await nc.close();
    }
  });

  it("refuses an unreachable URL with CLUSTER_UNREACHABLE, naming it", async () => {
    const url = `nats://127.0.0.1:${await closedPort()}`;
    await assert.rejects(connectCluster(url, { node: "a", log }), (err: unknown) => {
      assert.ok(err instanceof FennecError);
      assert.equal(err.code, "CLUSTER_UNREACHABLE");
      assert.match(err.message, new RegExp(url.replace(/[.]/g, "\\.")));
      return true;
    });
  });

  it("refuses a URL that is not nats://HOST:PORT", async () => {
    await assert.rejects(connectCluster("http://127.0.0.1:4222/x", { node: "a", log }), {
      code: "CLUSTER_UNREACHABLE",
    });
  });
});
