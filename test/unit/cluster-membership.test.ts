import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { checkNodeName, Membership, type LocalState } from "../../src/cluster/membership.js";
import type { NodeEvent } from "../../src/cluster/contract.js";
import { createLogger } from "../../src/core/log.js";
import { FennecError } from "../../src/core/errors.js";
import { startNats, type TestNats } from "../helpers/nats.js";
import { startFennec } from "../../src/main.js";
import { tempDir } from "../helpers/paths.js";
import { startTestServer } from "../helpers/server.js";
import { waitFor } from "../helpers/wait.js";

const local = (): LocalState => ({
  sandboxes: ["wasm"],
  missing: {},
  memory: { budgetMiB: 1024, reservedMiB: 0 },
  inFlight: 0,
  functions: {},
});

// Short times: the rules are the same at any scale; HEARTBEAT_MS/NODE_TTL_MS are tested end to end.
const TIMES = { heartbeatMs: 200, ttlMs: 1_500 };

describe("Membership over a real nats-server (short heartbeat and TTL)", () => {
  let nats: TestNats;
  const connections: NatsConnection[] = [];
  const members: Membership[] = [];
  const log = createLogger("silent");

  const conn = async () => {
    const nc = await connect({ servers: nats.url });
    connections.push(nc);
    return nc;
  };
  const join = async (name: string, nc?: NatsConnection) => {
    const m = await Membership.join(nc ?? (await conn()), { name, log, local, ...TIMES });
    members.push(m);
    await m.publish(`http://127.0.0.1:1/${name}`);
    return m;
  };
  const names = (m: Membership) => m.nodes().map((n) => n.name);

  before(async () => {
    nats = await startNats();
  });
  after(async () => {
    for (const m of members) await m.close().catch(() => undefined);
    for (const nc of connections) await nc.close().catch(() => undefined);
    await nats?.stop();
  });

  it("nodes see each other, told by onChange; a clean close is seen at once", async () => {
    const a = await join("a");
    const events: NodeEvent[] = [];
    a.onChange((e) => events.push(e));
    const b = await join("b");
    await waitFor("a to see b", () => names(a).join() === "a,b");
    await waitFor("b to see a", () => names(b).join() === "a,b");
    assert.equal(a.node("b")?.url, "http://127.0.0.1:1/b");
    assert.equal(a.self, "a");
    assert.ok(events.some((e) => e.type === "joined" && e.node.name === "b"));
    await waitFor("a refresh of b", () => events.some((e) => e.type === "updated" && e.node.name === "b"));
    const since = Date.now();
    await b.close();
    await waitFor("a to see b leave", () => names(a).join() === "a");
    // Not by age: by the delete.
    assert.ok(Date.now() - since < TIMES.ttlMs, `${Date.now() - since} ms`);
    assert.ok(events.some((e) => e.type === "left" && e.node.name === "b"));
  });

  it("a second live node of one name is refused with NODE_NAME_TAKEN", async () => {
    await join("dup");
    await assert.rejects(
      () => Membership.join(connections[0]!, { name: "dup", log, local, ...TIMES }),
      (err: unknown) =>
        err instanceof FennecError &&
        err.code === "NODE_NAME_TAKEN" &&
        /already named "dup"/.test(err.message),
    );
  });

  it("a node that dies (its connection gone, its key left) leaves after the TTL; its name is taken over", async () => {
    const watcher = await join("w");
    const nc = await conn();
    const dead = await join("dies", nc);
    const first = dead.node("dies")!.incarnation;
    await waitFor("w to see dies", () => names(watcher).includes("dies"));
    await nc.close();
    const since = Date.now();
    await waitFor("w to drop dies", () => !names(watcher).includes("dies"));
    assert.ok(Date.now() - since >= TIMES.ttlMs - TIMES.heartbeatMs, "by age, after the TTL");
    // Its key is still in the bucket, stale: a new process of that name takes it over.
    const again = await join("dies");
    await waitFor(
      "w to see dies again",
      () => watcher.node("dies")?.incarnation === again.node("dies")!.incarnation,
    );
    assert.notEqual(again.node("dies")!.incarnation, first);
  });

  it("tells whether a node seen to leave is really gone, from the bucket; a restart under its name knows its predecessor", async () => {
    const watcher = await join("w2");
    const nc = await conn();
    const dying = await join("gone", nc);
    assert.equal(dying.incarnation, dying.node("gone")!.incarnation, "the incarnation it publishes");
    assert.equal(dying.predecessor, undefined, "a fresh name has none");
    await waitFor("w2 to see gone", () => names(watcher).includes("gone"));
    const old = watcher.node("gone")!;
    // Still heartbeating: an older entry than the bucket's is not a departure (a watch that lagged).
    await waitFor("a newer heartbeat", async () => (await watcher.departure(old)) === "alive");
    const left: NodeEvent[] = [];
    watcher.onChange((e) => {
      if (e.type === "left") left.push(e);
    });
    await nc.close();
    await waitFor("w2 to see gone leave", () => left.some((e) => e.node.name === "gone"));
    const last = left.find((e) => e.node.name === "gone")!.node;
    assert.equal(await watcher.departure(last), "dead", "no rewrite since the last entry seen");
    const again = await join("gone");
    assert.equal(again.predecessor?.incarnation, dying.incarnation, "it took over the dead one's name");
    assert.equal(await watcher.departure(last), "dead", "another incarnation holds the name");
    await again.close();
    assert.equal(await watcher.departure(again.node("gone")!), "stopped", "a clean stop deletes its key");
  });

  it("a restarted nats-server: heartbeats and the watch resume by themselves", async () => {
    const a = await join("ra");
    const b = await join("rb");
    await waitFor("ra to see rb", () => names(a).includes("rb"));
    await nats.restart();
    const after = Date.now();
    await waitFor(
      "a heartbeat of rb written after the restart to reach ra",
      () => (a.node("rb")?.heartbeatAt ?? 0) > after,
    );
    await waitFor("rb to see ra", () => names(b).includes("ra"));
  });

  it("a node of a name seen again with another incarnation: the old one left, the new one joined", async () => {
    // A watcher with a longer TTL than the restarting node's: it still lists the old process when
    // the new one (which waits out only its own, shorter TTL) takes the name over.
    const watcher = await Membership.join(await conn(), {
      name: "v",
      log,
      local,
      heartbeatMs: 200,
      ttlMs: 20_000,
    });
    members.push(watcher);
    await watcher.publish("http://127.0.0.1:1/v");
    const events: NodeEvent[] = [];
    watcher.onChange((e) => e.node.name === "again" && events.push(e));
    const nc = await conn();
    const old = await join("again", nc);
    await waitFor("v to see again", () => names(watcher).includes("again"));
    const first = old.node("again")!.incarnation;
    await nc.close();
    await join("again");
    await waitFor("v to see the new incarnation", () => {
      const now = watcher.node("again")?.incarnation;
      return now !== undefined && now !== first;
    });
    const kinds = events.map((e) => `${e.type}:${e.node.incarnation === first ? "old" : "new"}`);
    assert.ok(kinds.includes("left:old") && kinds.at(-1) === "joined:new", kinds.join(" "));
  });

  it("a node claimed but not yet serving (no URL) is not listed", async () => {
    const watcher = await join("x");
    const early = await Membership.join(await conn(), { name: "early", log, local, ...TIMES });
    members.push(early);
    // Several heartbeats: still absent.
    await new Promise((r) => setTimeout(r, 3 * TIMES.heartbeatMs));
    assert.ok(!names(watcher).includes("early"));
    await early.publish("http://127.0.0.1:2");
    await waitFor("early to be listed once it serves", () => names(watcher).includes("early"));
  });

  it("node names are host-name shaped (a key of the bucket, a header value)", () => {
    for (const ok of ["n1", "node-2", "web_3", "host.example.com"]) checkNodeName(ok);
    for (const bad of ["", "a b", "a\nb", "a..b", ".a", "a.", "a*", "a>", "x".repeat(254)])
      assert.throws(
        () => checkNodeName(bad),
        (e: unknown) => e instanceof FennecError && e.code === "BAD_NAME",
        bad,
      );
  });

  it("startFennec publishes --advertise as its URL, and refuses a wildcard host without it", async () => {
    const server = await startTestServer({
      cluster: nats.url,
      node: "adv",
      advertise: "http://fennec-adv.example:9000",
    });
    try {
      assert.equal(server.fennec.cluster?.node("adv")?.url, "http://fennec-adv.example:9000");
      assert.ok(server.fennec.cluster?.node("adv")?.sandboxes.includes("wasm"));
    } finally {
      await server.close();
    }
    // Refused before anything is opened or connected.
    const { dir, cleanup } = await tempDir();
    try {
      const base = { registry: dir, port: 0, logLevel: "silent" as const, cluster: nats.url };
      await assert.rejects(() => startFennec({ ...base, node: "wild", host: "0.0.0.0" }), /--advertise/);
      await assert.rejects(
        () => startFennec({ ...base, node: "bad", advertise: "fennec:9000" }),
        /--advertise expects/,
      );
    } finally {
      await cleanup();
    }
  });
});
