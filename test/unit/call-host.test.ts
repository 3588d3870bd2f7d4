import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { FennecError } from "../../src/core/errors.js";
import { callHostFactory, CHAIN_DEPTH_HEADER, chainDepthOf } from "../../src/invocations/call-host.js";
import type { CallHostFactory } from "../../src/invocations/invocations.js";
import { SqliteStore } from "../../src/store/sqlite-store.js";

/** The call host over the real store, with a scheduler stand-in that records what it is asked. */
describe("call host: chain, await and state over the store", () => {
  let store: SqliteStore;
  let hosts: CallHostFactory;
  const lent: string[] = [];
  const returned: string[] = [];
  let placeable = true;
  let wakes = 0;

  const code = (c: string) => (err: unknown) => {
    assert.ok(err instanceof FennecError, String(err));
    assert.equal(err.code, c, err.message);
    return true;
  };

  before(() => {
    store = new SqliteStore(":memory:");
    hosts = callHostFactory(
      store,
      {
        configOf: ({ name }) => {
          if (name !== "fn") throw new FennecError("FUNCTION_NOT_FOUND", `no ${name}`);
          return {};
        },
        lend: (callId) => {
          lent.push(callId);
          return () => returned.push(callId);
        },
        canPlace: () => placeable,
      },
      { maxStateValueBytes: 1024, capacityCheckMs: 10, noCapacityAfterMs: 50 },
      () => wakes++,
    );
  });

  after(async () => {
    await store.close();
  });

  it("queues a chained call with its parent and depth, wakes the engine, and refuses other users and unknown functions", async () => {
    const host = hosts("parent-1", "default", 3);
    const before = wakes;
    const id = await host.chain("fn", Buffer.from("input"));
    assert.equal(wakes, before + 1);
    const [child] = await store.list({ parentId: "parent-1" });
    assert.equal(child!.id, id);
    assert.equal(child!.function, "default/fn");
    assert.equal(child!.state, "queued");
    assert.equal((await host.chain("default/fn", new Uint8Array(0))).length, 36);
    await assert.rejects(host.chain("alice/fn", new Uint8Array(0)), code("CHAIN_OTHER_USER"));
    await assert.rejects(host.chain("nope", new Uint8Array(0)), code("FUNCTION_NOT_FOUND"));
    await assert.rejects(host.chain("../fn", new Uint8Array(0)), code("BAD_NAME"));
    assert.equal((await store.list({ parentId: "parent-1" })).length, 2);
  });

  it("carries the depth in the stored request and refuses past the limit", async () => {
    await hosts("p-depth", "default", 15).chain("fn", new Uint8Array(0));
    const [child] = await store.list({ parentId: "p-depth" });
    const taken = await store.take({ node: "n", max: 100, leaseMs: 60_000, now: Date.now() + 1 });
    const leased = taken.find((c) => c.record.id === child!.id);
    assert.ok(leased, "the chained call is queued");
    assert.equal(chainDepthOf(leased.request.headers), 16);
    assert.equal(chainDepthOf({ [CHAIN_DEPTH_HEADER]: "junk" }), 0);
    await assert.rejects(
      hosts("p-deep", "default", 16).chain("fn", new Uint8Array(0)),
      code("CHAIN_TOO_DEEP"),
    );
    assert.equal((await store.list({ parentId: "p-deep" })).length, 0);
  });

  it("awaits only its own children, lending its slot while it waits", async () => {
    const host = hosts("p-await", "default", 0);
    const id = await host.chain("fn", Buffer.from("x"));
    await assert.rejects(hosts("someone-else", "default", 0).await(id), code("CALL_NOT_FOUND"));
    const waiting = host.await(id);
    await new Promise((r) => setImmediate(r));
    assert.ok(lent.includes("p-await"));
    const taken = await store.take({ node: "n", max: 10, leaseMs: 60_000, now: Date.now() + 1 });
    assert.ok(taken.some((c) => c.record.id === id));
    await store.finish(id, "n", {
      state: "succeeded",
      response: { status: 200, headers: [], body: Buffer.from("child output") },
      figures: { status: 200 },
    });
    const result = await waiting;
    assert.equal(result.status, 200);
    assert.equal(Buffer.from(result.output).toString(), "child output");
    assert.equal(result.errorCode, undefined);
    assert.ok(returned.includes("p-await"), "the slot is taken back once the await is over");
  });

  it("fails an await with CHAIN_NO_CAPACITY when its queued child can never be placed", async () => {
    const host = hosts("p-full", "default", 0);
    const id = await host.chain("fn", new Uint8Array(0));
    placeable = false;
    try {
      await assert.rejects(host.await(id), code("CHAIN_NO_CAPACITY"));
    } finally {
      placeable = true;
    }
    assert.ok(returned.includes("p-full"));
  });

  it("gives up an await when its caller ends (the signal), taking its slot back", async () => {
    const host = hosts("p-gone", "default", 0);
    const id = await host.chain("fn", new Uint8Array(0));
    const ending = new AbortController();
    const waiting = host.await(id, ending.signal);
    await new Promise((r) => setImmediate(r));
    assert.ok(lent.includes("p-gone") && !returned.includes("p-gone"));
    ending.abort(new FennecError("CALL_STATE", "the caller ended"));
    await assert.rejects(waiting);
    assert.ok(returned.includes("p-gone"));
  });

  it("bounds state keys and values (STATE_TOO_LARGE)", async () => {
    const host = hosts("p-state", "default", 0);
    await host.state.set("k", Buffer.alloc(1024));
    await assert.rejects(host.state.set("k", Buffer.alloc(1025)), code("STATE_TOO_LARGE"));
    await assert.rejects(host.state.write("k", 1000, Buffer.alloc(25)), code("STATE_TOO_LARGE"));
    await assert.rejects(host.state.append("k", Buffer.alloc(1025)), code("STATE_TOO_LARGE"));
    await assert.rejects(host.state.get("k".repeat(257)), code("STATE_TOO_LARGE"));
    await assert.rejects(host.state.get(""), code("BAD_REQUEST"));
    assert.equal((await host.state.get("k"))!.byteLength, 1024);
  });
});
