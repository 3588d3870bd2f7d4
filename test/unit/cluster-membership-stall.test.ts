import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { CLUSTER_BUCKETS } from "../../src/cluster/contract.js";
import { Membership, type LocalState } from "../../src/cluster/membership.js";
import { createLogger } from "../../src/core/log.js";
import { startNats, type TestNats } from "../helpers/nats.js";
import { waitFor } from "../helpers/wait.js";

const local = (): LocalState => ({
  sandboxes: ["wasm"],
  missing: {},
  memory: { budgetMiB: 1024, reservedMiB: 0 },
  inFlight: 0,
  functions: {},
});

// A TTL far shorter than the 10 s a stalled watch takes to notice (two missed 5 s heartbeats).
const TIMES = { heartbeatMs: 200, ttlMs: 1_500 };
const STREAM = `KV_${CLUSTER_BUCKETS.nodes}`;

describe("Membership when its watch stalls (its consumer gone, as on a dead nats-server of a cluster)", () => {
  let nats: TestNats;
  const connections: NatsConnection[] = [];
  const members: Membership[] = [];
  const log = createLogger("silent");

  before(async () => {
    nats = await startNats();
  });
  after(async () => {
    for (const m of members) await m.close().catch(() => undefined);
    for (const nc of connections) await nc.close().catch(() => undefined);
    await nats?.stop();
  });

  it("keeps a node that goes on writing its key, read directly, while the watch is stalled", async () => {
    const join = async (name: string) => {
      const nc = await connect({ servers: nats.url });
      connections.push(nc);
      const m = await Membership.join(nc, { name, log, local, ...TIMES });
      members.push(m);
      await m.publish(`http://127.0.0.1:1/${name}`);
      return m;
    };
    const a = await join("a");
    const b = await join("b");
    const names = (m: Membership) => m.nodes().map((n) => n.name);
    await waitFor("a and b to see each other", () => names(a).join() === "a,b" && names(b).join() === "a,b");

    // Both watches' consumers vanish: no entry reaches either node until its client notices the
    // missing heartbeats and makes a new consumer, far past the TTL. Heartbeats still get through.
    const admin = await connect({ servers: nats.url });
    connections.push(admin);
    const jsm = await jetstreamManager(admin);
    const consumers = async () => {
      const out: string[] = [];
      for await (const c of jsm.consumers.list(STREAM)) out.push(c.name);
      return out;
    };
    const stalled = await consumers();
    assert.equal(stalled.length, 2, `one watch per node: ${stalled.join(", ")}`);
    for (const name of stalled) await jsm.consumers.delete(STREAM, name);

    // The consumers' client notices only after two missed idle heartbeats of 30 s (nats.js's
    // ordered consumer), so the watches stay silent for a minute: every refresh seen from now on
    // came through the direct read. Done once each node has been refreshed so, two TTLs in.
    let dropped = "";
    const stalledAt = Date.now();
    const refreshed = { a: 0, b: 0 };
    a.onChange((e) => {
      if (e.type === "updated" && e.node.name === "b") refreshed.a = Date.now();
    });
    b.onChange((e) => {
      if (e.type === "updated" && e.node.name === "a") refreshed.b = Date.now();
    });
    await waitFor(
      "both nodes refreshed by a direct read two TTLs into the stall (or one dropped)",
      () => {
        for (const [who, m] of [
          ["a", a],
          ["b", b],
        ] as const)
          if (names(m).join() !== "a,b")
            dropped ||= `${who} saw [${names(m).join(", ")}] ${Date.now() - stalledAt} ms into the stall`;
        const late = stalledAt + 2 * TIMES.ttlMs;
        return dropped !== "" || (refreshed.a > late && refreshed.b > late);
      },
      { intervalMs: 50 },
    );
    assert.equal(dropped, "");
    assert.deepEqual(await consumers(), [], "the watches were still stalled: the direct read kept the nodes");

    // A node that really stops writing (its connection gone, its key left) still leaves after the
    // TTL: the direct read finds no newer write.
    const gone = Date.now();
    await connections[1]!.close();
    await waitFor("a to see b leave", () => names(a).join() === "a");
    assert.ok(Date.now() - gone >= TIMES.ttlMs - TIMES.heartbeatMs, `${Date.now() - gone} ms`);
  });
});
