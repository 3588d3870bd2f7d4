import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import { after, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { connect, nanos, type NatsConnection } from "@nats-io/transport-node";
import type { InvocationStore, StoredLogLine } from "../../src/store/contract.js";
import { idempotencyKey } from "../../src/store/jetstream/names.js";
import { destroyClusterStore, openClusterStore } from "../../src/store/jetstream/open.js";
import { startNats, type TestNats } from "../helpers/nats.js";
import { waitFor } from "../helpers/wait.js";
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

describe("jetstream store across a nats-server restart", () => {
  it("keeps every accepted call and keeps working on the same connections once the server is back", async () => {
    const prefix = `t${randomBytes(6).toString("hex")}`;
    const ncA = await client();
    const ncB = await client();
    const a = await openClusterStore(ncA, { prefix });
    const b = await openClusterStore(ncB, { prefix });
    try {
      const ids = Array.from({ length: 20 }, () => randomUUID());
      for (const [i, id] of ids.entries())
        await a.enqueue({ id, function: "u/f", request: req(`b${i}`), submittedAt: i });
      const first = await b.take({ node: "nb", max: 5, leaseMs: 60_000, now: Date.now() });
      assert.equal(first.length, 5);

      await (await server()).restart();

      // B finishes what it leased, on its reconnected connection; A, which waits, is told.
      const done = a.whenFinished(first[0]!.record.id);
      await waitFor("a write after the restart", async () => {
        await b.finish(first[0]!.record.id, "nb", { state: "succeeded", response: undefined, figures: {} });
        return true;
      });
      assert.equal((await done).state, "succeeded");
      const rest = await a.take({ node: "na", max: 100, leaseMs: 60_000, now: Date.now() });
      assert.deepEqual(
        rest.map((l) => l.record.id),
        ids.slice(5),
        "every call accepted before the restart is still there, once",
      );
      assert.equal(new TextDecoder().decode(rest[0]!.request.body), "b5");
      const late = randomUUID();
      await a.enqueue({ id: late, function: "u/f", request: req("late"), submittedAt: 100 });
      await waitFor("B sees A's new call", async () => (await b.get(late))?.state === "queued");
    } finally {
      await a.close();
      await b.close();
      await destroyClusterStore(ncA, prefix);
      await ncA.close();
      await ncB.close();
    }
  });
});

describe("jetstream store on two nodes", () => {
  it("gives the log stream the retention's age and bytes, so nats-server drops old lines itself", async () => {
    const prefix = `t${randomBytes(6).toString("hex")}`;
    const nc = await client();
    const store = await openClusterStore(nc, {
      prefix,
      retention: { maxAgeMs: 3_600_000, maxBytes: 8 * 2 ** 20 },
    });
    try {
      const info = await (await jetstreamManager(nc)).streams.info(`${prefix}-logs`);
      assert.equal(info.config.max_age, nanos(3_600_000));
      assert.equal(info.config.max_bytes, 8 * 2 ** 20);
    } finally {
      await store.close();
      await destroyClusterStore(nc, prefix);
      await nc.close();
    }
  });

  it("tells a node's log followers of lines another node writes, with the seq every node reads", async () => {
    const prefix = `t${randomBytes(6).toString("hex")}`;
    const ncA = await client();
    const ncB = await client();
    const a = await openClusterStore(ncA, { prefix });
    const b = await openClusterStore(ncB, { prefix });
    try {
      const seen: StoredLogLine[] = [];
      const stop = b.followLogs({ function: "u/f" }, (l) => seen.push(l));
      // The follower's consumer starts from the lines written after it exists: write until one arrives.
      await waitFor(
        "B's follower to hear A's line",
        async () => {
          a.appendLogs([
            { time: Date.now(), function: "u/f", callId: "c1", instanceId: "i", stream: "stdout", text: "x" },
          ]);
          a.appendLogs([
            {
              time: Date.now(),
              function: "u/g",
              callId: undefined,
              instanceId: "i",
              stream: "stdout",
              text: "other",
            },
          ]);
          await a.flush();
          return seen.length > 0;
        },
        { intervalMs: 100 },
      );
      stop();
      assert.ok(seen.every((l) => l.function === "u/f" && l.text === "x" && l.callId === "c1"));
      const stored = await b.logs({ function: "u/f" });
      assert.equal(stored.find((l) => l.seq === seen[0]!.seq)?.text, "x", "the same seq on both nodes");
    } finally {
      await a.close();
      await b.close();
      await destroyClusterStore(ncA, prefix);
      await ncA.close();
      await ncB.close();
    }
  });
});

describe("jetstream store: an enqueue cut between its writes", () => {
  it("replaces an idempotency key that names a call never written, so a resubmission gets a call that exists", async () => {
    const prefix = `t${randomBytes(6).toString("hex")}`;
    const nc = await client();
    const store = await openClusterStore(nc, { prefix });
    try {
      // What a node that died after writing the key and before writing its call left behind.
      const keys = await new Kvm(nc).open(`${prefix}-idempotency`);
      const ghost = randomUUID();
      await keys.create(idempotencyKey("u/f", "k1"), ghost);

      const id = randomUUID();
      const first = await store.enqueue({
        id,
        function: "u/f",
        request: req("again"),
        submittedAt: 1,
        idempotencyKey: "k1",
      });
      assert.deepEqual(first, { id, created: true }, "the dangling key is taken over, not answered");
      assert.equal((await store.get(id))?.state, "queued");
      assert.equal(await store.get(ghost), undefined);
      const twin = await store.enqueue({
        id: randomUUID(),
        function: "u/f",
        request: req("twice"),
        submittedAt: 2,
        idempotencyKey: "k1",
      });
      assert.deepEqual(twin, { id, created: false }, "the key now names the call that exists");
    } finally {
      await store.close();
      await destroyClusterStore(nc, prefix);
      await nc.close();
    }
  });
});

const req = (body: string) => ({
  method: "POST",
  path: "/",
  query: "",
  headers: {},
  body: new TextEncoder().encode(body),
});
