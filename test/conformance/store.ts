import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { timeOrderedUuid } from "../../src/core/call-id.js";
import { afterEach, beforeEach, describe, it } from "node:test";
import { FennecError } from "../../src/core/errors.js";
import type {
  CallRecord,
  InvocationStore,
  LogLine,
  NewAsyncCall,
  StoredLogLine,
  StoredRequest,
  SyncCallEnd,
} from "../../src/store/contract.js";
import { syncCallRecord } from "../../src/store/new-call.js";
import type { InvocationRecord } from "../../src/core/types.js";

/**
 * The one conformance suite every invocation store must pass (the embedded SQLite one, the
 * cluster's later). A store's test supplies a factory; `reopen` (closing the store and opening
 * the same data again) lets the suite check what must survive a restart.
 */
export interface StoreFixture {
  readonly store: InvocationStore;
  /** Closes `store` and opens what it wrote again; absent for a store that keeps nothing. */
  readonly reopen?: () => Promise<InvocationStore>;
  /** Closes whatever is open and removes what the fixture made. */
  readonly cleanup: () => Promise<void>;
}

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array | undefined) => (b === undefined ? undefined : new TextDecoder().decode(b));

const request = (body = "in", over: Partial<StoredRequest> = {}): StoredRequest => ({
  method: "POST",
  path: "/p",
  query: "a=1",
  headers: { "content-type": "text/plain", "x-fennec-chain-depth": "1" },
  body: enc(body),
  ...over,
});

const call = (fn = "u/f", over: Partial<NewAsyncCall> = {}): NewAsyncCall => ({
  id: randomUUID(),
  function: fn,
  request: request(),
  submittedAt: 1_000,
  ...over,
});

/** A sync call's end as the gateway hands it over (recordSync): a warm call that answered 200. */
const syncEnd = (over: Partial<SyncCallEnd> = {}, figures: Partial<InvocationRecord> = {}): SyncCallEnd => ({
  id: randomUUID(),
  node: "n1",
  submittedAt: 1_000,
  finishedAt: 1_010,
  figures: {
    node: "n1#1",
    function: "u/f",
    instanceId: "i1",
    startType: "warm",
    queueWaitMs: 0.4,
    initMs: 0,
    ttfbMs: 2.5,
    execMs: 3.25,
    status: 200,
    errorCode: undefined,
    ...figures,
  },
  errorMessage: undefined,
  via: undefined,
  placement: undefined,
  ...over,
});

/** A finished sync call's record, as the gateway writes one per call. */
const syncRecord = (over: Partial<CallRecord> = {}): CallRecord => ({
  id: randomUUID(),
  function: "u/f",
  kind: "sync",
  state: "succeeded",
  node: "n1",
  parentId: undefined,
  attempt: 1,
  submittedAt: 1_000,
  startedAt: 1_001,
  finishedAt: 1_010,
  startType: "warm",
  queueWaitMs: 1,
  initMs: undefined,
  ttfbMs: 4,
  execMs: 9,
  status: 200,
  errorCode: undefined,
  errorMessage: undefined,
  notBefore: undefined,
  idempotencyKey: undefined,
  callbackUrl: undefined,
  ...over,
});

const line = (over: Partial<LogLine> = {}): LogLine => ({
  time: 1_000,
  function: "u/f",
  callId: undefined,
  instanceId: "i1",
  stream: "stderr",
  text: "hello",
  ...over,
});

const take = (
  store: InvocationStore,
  node: string,
  now: number,
  max = 10,
  leaseMs = 60_000,
  skip?: Set<string>,
) => store.take({ node, max, leaseMs, now, ...(skip ? { skip } : {}) });

const rejectsWith = (p: Promise<unknown>, code: string) =>
  assert.rejects(p, (err: unknown) => err instanceof FennecError && err.code === code);

/** Whether `p` has settled after the event loop has had a few turns (a store answers from it). */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  return done;
}

export function runStoreConformance(name: string, setup: () => Promise<StoreFixture>): void {
  describe(`store conformance: ${name}`, () => {
    let fx: StoreFixture;
    let store: InvocationStore;
    beforeEach(async () => {
      fx = await setup();
      store = fx.store;
    });
    afterEach(async () => {
      await fx.cleanup();
    });
    /** The store as it is after a restart: `store` is closed, the reopened one takes its place. */
    const reopen = async () => {
      store = await fx.reopen!();
      return store;
    };

    describe("async calls", () => {
      it("runs a call from enqueue through take to finish, keeping its request and result", async () => {
        const c = call("u/f", { parentId: "parent-1", callbackUrl: "http://cb.example/x" });
        assert.deepEqual(await store.enqueue(c), { id: c.id, created: true });
        const queued = await store.get(c.id);
        assert.equal(queued?.state, "queued");
        assert.equal(queued?.kind, "async");
        assert.equal(queued?.attempt, 0);
        assert.equal(queued?.node, undefined);
        assert.equal(queued?.parentId, "parent-1");
        assert.equal(queued?.callbackUrl, "http://cb.example/x");
        assert.equal(queued?.submittedAt, 1_000);

        const leased = await take(store, "n1", 2_000);
        assert.equal(leased.length, 1);
        const [l] = leased;
        assert.equal(l!.record.id, c.id);
        assert.equal(l!.record.state, "running");
        assert.equal(l!.record.node, "n1");
        assert.equal(l!.record.attempt, 1);
        assert.equal(l!.request.method, "POST");
        assert.equal(l!.request.path, "/p");
        assert.equal(l!.request.query, "a=1");
        assert.deepEqual(l!.request.headers, c.request.headers);
        assert.equal(dec(l!.request.body), "in");
        assert.equal((await store.get(c.id))?.state, "running");
        assert.deepEqual(await take(store, "n2", 2_001), [], "a leased call is not taken twice");

        await store.finish(c.id, "n1", {
          state: "succeeded",
          response: { status: 201, headers: [["x-a", "1"]], body: enc("out") },
          figures: { finishedAt: 2_500 },
        });
        const done = await store.get(c.id);
        assert.equal(done?.state, "succeeded");
        assert.equal(done?.status, 201);
        assert.equal(done?.finishedAt, 2_500);
        const res = await store.response(c.id);
        assert.equal(res?.status, 201);
        assert.deepEqual(res?.headers, [["x-a", "1"]]);
        assert.equal(dec(res?.body), "out");
        assert.deepEqual(await take(store, "n1", 3_000), [], "a finished call is not taken again");
      });

      it("keeps the figures an attempt reports", async () => {
        const c = call();
        await store.enqueue(c);
        await take(store, "n1", 2_000);
        await store.finish(c.id, "n1", {
          state: "failed",
          response: undefined,
          figures: {
            startType: "cold",
            queueWaitMs: 12.5,
            initMs: 30,
            ttfbMs: 40,
            execMs: 55,
            errorCode: "FN_CRASHED",
            errorMessage: "it exited",
            finishedAt: 2_100,
          },
        });
        const r = await store.get(c.id);
        assert.equal(r?.state, "failed");
        assert.equal(r?.startType, "cold");
        assert.equal(r?.queueWaitMs, 12.5);
        assert.equal(r?.initMs, 30);
        assert.equal(r?.ttfbMs, 40);
        assert.equal(r?.execMs, 55);
        assert.equal(r?.errorCode, "FN_CRASHED");
        assert.equal(r?.errorMessage, "it exited");
        assert.equal(r?.status, undefined);
        assert.equal(r?.startedAt, 2_000);
        assert.equal(await store.response(c.id), undefined);
      });

      it("leases oldest first, at most `max`, skipping functions in `skip`", async () => {
        const a = call("u/f", { submittedAt: 3 });
        const b = call("u/g", { submittedAt: 1 });
        const c = call("u/f", { submittedAt: 2 });
        for (const x of [a, b, c]) await store.enqueue(x);
        const first = await take(store, "n1", 10, 2);
        assert.deepEqual(
          first.map((l) => l.record.id),
          [b.id, c.id],
        );
        await store.enqueue(call("u/g", { submittedAt: 0 }));
        const skipped = await take(store, "n1", 10, 10, 60_000, new Set(["u/g"]));
        assert.deepEqual(
          skipped.map((l) => l.record.id),
          [a.id],
        );
        assert.deepEqual(await take(store, "n1", 10, 0), [], "max 0 leases nothing");
      });

      it("retries at notBefore and not before, counting the attempt", async () => {
        const c = call();
        await store.enqueue(c);
        await take(store, "n1", 2_000);
        await store.retry(c.id, "n1", 5_000, { status: 503, errorCode: "FN_TIMEOUT" });
        const waiting = await store.get(c.id);
        assert.equal(waiting?.state, "queued");
        assert.equal(waiting?.notBefore, 5_000);
        assert.equal(waiting?.status, 503, "the failed attempt's figures are kept until the next one");
        assert.deepEqual(await take(store, "n1", 4_999), [], "not taken before notBefore");
        const again = await take(store, "n2", 5_000);
        assert.equal(again.length, 1);
        assert.equal(again[0]!.record.attempt, 2);
        assert.equal(again[0]!.record.node, "n2");
        assert.equal(dec(again[0]!.request.body), "in", "the request is kept across attempts");
      });

      it("buries a call as a dead letter, replays it from attempt 1, and deletes calls", async () => {
        const c = call();
        await store.enqueue(c);
        await take(store, "n1", 2_000);
        await store.bury(c.id, "n1", { status: 500, errorCode: "FN_CRASHED", finishedAt: 2_100 });
        const dead = await store.get(c.id);
        assert.equal(dead?.state, "dead");
        assert.equal(dead?.errorCode, "FN_CRASHED");
        assert.deepEqual(
          (await store.list({ state: "dead" })).map((r) => r.id),
          [c.id],
        );
        assert.deepEqual(await take(store, "n1", 9_000), [], "a dead letter is not run");

        assert.equal(await store.replay(c.id, 10_000), true);
        const replayed = await store.get(c.id);
        assert.equal(replayed?.state, "queued");
        assert.equal(replayed?.attempt, 0);
        assert.equal(replayed?.submittedAt, 10_000);
        assert.equal(replayed?.errorCode, undefined);
        assert.equal(await store.replay(c.id, 10_000), false, "only a dead call is replayed");
        assert.equal(await store.replay(randomUUID(), 10_000), false);
        const [l] = await take(store, "n1", 10_001);
        assert.equal(l?.record.attempt, 1);
        assert.equal(dec(l?.request.body), "in");

        await rejectsWith(store.delete(c.id), "CALL_STATE");
        await store.finish(c.id, "n1", {
          state: "succeeded",
          response: { status: 200, headers: [], body: enc("x") },
          figures: {},
        });
        assert.equal(await store.delete(c.id), true);
        assert.equal(await store.get(c.id), undefined);
        assert.equal(await store.response(c.id), undefined);
        assert.equal(await store.delete(c.id), false);
        const queued = call();
        await store.enqueue(queued);
        assert.equal(await store.delete(queued.id), true, "a queued call can be deleted");
        assert.deepEqual(await take(store, "n1", 20_000), []);
      });

      it("makes a callback pending in the write that ends the call, until it is delivered or given up, across a restart", async () => {
        const url = "http://cb.example/x";
        const [ok, bad, plain, replayed] = [1, 2, 3, 4].map((at) =>
          call("u/f", { submittedAt: at, ...(at === 3 ? {} : { callbackUrl: url }) }),
        );
        for (const c of [ok, bad, plain, replayed]) await store.enqueue(c!);
        assert.equal((await take(store, "n1", 2_000)).length, 4);
        assert.deepEqual(await store.pendingCallbacks(10), [], "nothing is pending before a call ends");
        assert.equal((await store.get(ok!.id))?.callbackState, undefined);
        await store.finish(ok!.id, "n1", {
          state: "succeeded",
          response: { status: 200, headers: [], body: enc("out") },
          figures: { finishedAt: 3_000 },
        });
        await store.bury(bad!.id, "n1", { errorCode: "FN_CRASHED", finishedAt: 3_001 });
        await store.finish(plain!.id, "n1", {
          state: "failed",
          response: undefined,
          figures: { finishedAt: 3_002 },
        });
        await store.bury(replayed!.id, "n1", { errorCode: "FN_CRASHED", finishedAt: 3_003 });
        assert.equal((await store.get(ok!.id))?.callbackState, "pending");
        assert.equal((await store.get(plain!.id))?.callbackState, undefined, "no callback, no delivery");
        assert.equal(await store.replay(replayed!.id, 4_000), true);
        assert.equal(
          (await store.get(replayed!.id))?.callbackState,
          undefined,
          "a replay's delivery starts anew",
        );

        const pending = async (s: InvocationStore) =>
          (await s.pendingCallbacks(10)).map((r) => [r.id, r.state]);
        assert.deepEqual(await pending(store), [
          [ok!.id, "succeeded"],
          [bad!.id, "dead"],
        ]);
        assert.deepEqual(
          (await store.pendingCallbacks(1)).map((r) => r.id),
          [ok!.id],
          "oldest ended first, at most the limit",
        );
        if (fx.reopen) {
          store = await reopen();
          assert.deepEqual(
            await pending(store),
            [
              [ok!.id, "succeeded"],
              [bad!.id, "dead"],
            ],
            "a pending delivery survives a restart",
          );
        }
        await store.callbackEnded(ok!.id, "delivered");
        await store.callbackEnded(bad!.id, "given-up");
        await store.callbackEnded(randomUUID(), "delivered");
        assert.deepEqual(await pending(store), []);
        assert.equal((await store.get(ok!.id))?.callbackState, "delivered");
        assert.equal((await store.get(bad!.id))?.callbackState, "given-up");
      });

      it("gives a gone node's running calls and pending callbacks to live ones, each once, before its lease runs out", async () => {
        const url = "http://cb.example/x";
        const [running, ok, bad, mine] = [1, 2, 3, 4].map((at) =>
          call("u/f", { submittedAt: at, callbackUrl: url }),
        );
        for (const c of [running, ok, bad, mine]) await store.enqueue(c!);
        // n1 runs three under a lease far from over; n2 one.
        assert.equal((await take(store, "n1", 2_000, 3, 600_000)).length, 3);
        assert.equal((await take(store, "n2", 2_000, 1, 600_000)).length, 1);
        await store.finish(ok!.id, "n1", {
          state: "succeeded",
          response: undefined,
          figures: { finishedAt: 3_000 },
        });
        await store.bury(bad!.id, "n1", { errorCode: "FN_CRASHED", finishedAt: 3_001 });
        await store.finish(mine!.id, "n2", {
          state: "failed",
          response: undefined,
          figures: { finishedAt: 3_002 },
        });

        // n1 is gone: its running call is due again now, its attempt stays counted.
        assert.equal(await store.requeueRunning("n1"), 1);
        const [again] = await take(store, "n3", 2_001, 10, 600_000);
        assert.equal(again?.record.id, running!.id);
        assert.equal(again?.record.attempt, 2, "the gone node's attempt counts: it may have run in part");
        // n1 was only cut off and comes back: its late result is refused, n3's stands.
        await rejectsWith(
          store.finish(running!.id, "n1", { state: "succeeded", response: undefined, figures: {} }),
          "CALL_STATE",
        );
        assert.equal(await store.extendLease(running!.id, "n1", 600_000, 2_002), false);

        // Its callbacks: two live nodes ask at once; each callback goes to one of them.
        const [a, b] = await Promise.all([
          store.takeCallbacks("n1", "n3", 10),
          store.takeCallbacks("n1", "n4", 10),
        ]);
        const taken = [...a, ...b].map((r) => r.id).sort();
        assert.deepEqual(taken, [ok!.id, bad!.id].sort(), "each of n1's callbacks once, none of n2's");
        assert.deepEqual(await store.takeCallbacks("n1", "n3", 10), [], "nothing of n1's is left");
        assert.ok(
          taken.length === 2 && [...a, ...b].every((r) => r.callbackState === "pending" && r.node === "n1"),
          "the record still says who ran it",
        );
        assert.deepEqual(
          (await store.pendingCallbacks(10)).map((r) => r.id),
          [ok!.id, bad!.id, mine!.id],
          "still pending until delivered",
        );
        if (fx.reopen) store = await reopen();
        // A taker that dies in turn is taken over the same way (and it survives a restart).
        const first = a.length > 0 ? "n3" : "n4";
        assert.equal((await store.takeCallbacks(first, "n5", 1)).length, 1, "at most the limit");
        const rest = [
          ...(await store.takeCallbacks("n3", "n5", 10)),
          ...(await store.takeCallbacks("n4", "n5", 10)),
        ];
        assert.equal(rest.length, 1);
        await store.callbackEnded(ok!.id, "delivered");
        await store.callbackEnded(bad!.id, "delivered");
        assert.deepEqual(await store.takeCallbacks("n5", "n6", 10), [], "a delivered callback is nobody's");
        assert.deepEqual(
          (await store.takeCallbacks("n2", "n6", 10)).map((r) => r.id),
          [mine!.id],
          "n2's own is still its own until it is gone",
        );
      });

      it("refuses to end a call that is unknown, already ended, or another node's", async () => {
        const c = call();
        await store.enqueue(c);
        await take(store, "n1", 2_000);
        await rejectsWith(
          store.finish(randomUUID(), "n1", { state: "succeeded", response: undefined, figures: {} }),
          "CALL_NOT_FOUND",
        );
        await rejectsWith(store.retry(c.id, "n2", 3_000, {}), "CALL_STATE");
        await rejectsWith(store.bury(c.id, "n2", {}), "CALL_STATE");
        await store.finish(c.id, "n1", { state: "succeeded", response: undefined, figures: {} });
        await rejectsWith(store.bury(c.id, "n1", {}), "CALL_STATE");
        assert.equal((await store.get(c.id))?.state, "succeeded");
      });

      it("gives a call whose lease ran out to another node; the first one's lease is gone", async () => {
        const c = call();
        await store.enqueue(c);
        await take(store, "n1", 1_000, 10, 100);
        assert.deepEqual(await take(store, "n2", 1_050), [], "not while the lease holds");
        assert.equal(await store.extendLease(c.id, "n1", 100, 1_050), true);
        assert.deepEqual(await take(store, "n2", 1_120), [], "the extended lease holds");
        const [l] = await take(store, "n2", 1_200);
        assert.equal(l?.record.id, c.id);
        assert.equal(l?.record.attempt, 2, "a redelivery is a new attempt");
        assert.equal(l?.record.node, "n2");
        assert.equal(await store.extendLease(c.id, "n1", 100, 1_200), false);
        await rejectsWith(
          store.finish(c.id, "n1", { state: "succeeded", response: undefined, figures: {} }),
          "CALL_STATE",
        );
        assert.equal(await store.extendLease(c.id, "n2", 100, 1_200), true);
        await store.finish(c.id, "n2", { state: "succeeded", response: undefined, figures: {} });
        assert.equal((await store.get(c.id))?.node, "n2");
      });

      it("takes a late result of a call whose lease ran out when no node took it again", async () => {
        const c = call();
        await store.enqueue(c);
        await take(store, "n1", 1_000, 10, 100);
        // Another node's take finds the lease expired; it skips the function, so nothing re-runs it.
        assert.deepEqual(await take(store, "n2", 2_000, 10, 100, new Set(["u/f"])), []);
        await store.finish(c.id, "n1", { state: "succeeded", response: undefined, figures: {} });
        assert.equal((await store.get(c.id))?.state, "succeeded");
      });

      it("requeues every call a node was running when it restarts", async () => {
        const calls = [1, 2, 3].map((at) => call("u/f", { submittedAt: at }));
        for (const c of calls) await store.enqueue(c);
        await take(store, "n1", 2_000, 2);
        await take(store, "n2", 2_000, 1);
        assert.equal(await store.requeueRunning("n1"), 2);
        assert.equal(await store.requeueRunning("n1"), 0);
        const states = await Promise.all(calls.map(async (c) => (await store.get(c.id))?.state));
        assert.deepEqual(states, ["queued", "queued", "running"]);
        const again = await take(store, "n1", 2_001);
        assert.deepEqual(
          again.map((l) => l.record.attempt),
          [2, 2],
        );
      });

      it("returns the first call's id for an idempotency key already used by the function", async () => {
        const first = call("u/f", { idempotencyKey: "k1" });
        assert.deepEqual(await store.enqueue(first), { id: first.id, created: true });
        const again = call("u/f", { idempotencyKey: "k1" });
        assert.deepEqual(await store.enqueue(again), { id: first.id, created: false });
        assert.equal(await store.get(again.id), undefined, "nothing was added");
        assert.equal((await store.get(first.id))?.idempotencyKey, "k1");
        const other = call("u/g", { idempotencyKey: "k1" });
        assert.deepEqual(
          await store.enqueue(other),
          { id: other.id, created: true },
          "keys are per function",
        );
        // Submitted together (the same tick), still one call.
        const twins = [call("u/h", { idempotencyKey: "k2" }), call("u/h", { idempotencyKey: "k2" })];
        const ids = await Promise.all(twins.map((t) => store.enqueue(t)));
        assert.deepEqual(ids, [
          { id: twins[0]!.id, created: true },
          { id: twins[0]!.id, created: false },
        ]);
        assert.equal((await take(store, "n1", 2_000)).length, 3);
      });

      it("accepts calls submitted together, each on its own", async () => {
        const many = Array.from({ length: 50 }, (_, i) =>
          call("u/f", { submittedAt: i, request: request(`b${i}`) }),
        );
        const results = await Promise.all(many.map((c) => store.enqueue(c)));
        assert.deepEqual(
          results.map((r) => r.id),
          many.map((c) => c.id),
        );
        const leased = await take(store, "n1", 2_000, 100);
        assert.deepEqual(
          leased.map((l) => dec(l.request.body)),
          many.map((_, i) => `b${i}`),
        );
      });

      it("keeps a large binary body byte for byte", async () => {
        const body = new Uint8Array(3 * 2 ** 20);
        for (let i = 0; i < body.length; i++) body[i] = (i * 7919) & 0xff;
        const c = call("u/f", { request: request("", { body }) });
        await store.enqueue(c);
        const [l] = await take(store, "n1", 2_000);
        assert.deepEqual(Buffer.from(l!.request.body), Buffer.from(body));
      });

      it("counts queued, running and dead calls per function", async () => {
        const now = Date.now();
        const [a, b, c, d] = [
          call("u/f", { submittedAt: now - 5_000 }),
          call("u/f", { submittedAt: now - 3_000 }),
          call("u/f", { submittedAt: now - 1_000 }),
          call("u/g", { submittedAt: now }),
        ];
        for (const x of [a, b, c, d]) await store.enqueue(x);
        await take(store, "n1", now, 1);
        await take(store, "n1", now, 1);
        await store.bury(b.id, "n1", {});
        const figures = await store.queueFigures();
        const f = figures.get("u/f");
        assert.equal(f?.queued, 1);
        assert.equal(f?.running, 1);
        assert.equal(f?.dead, 1);
        assert.ok(f.oldestQueuedAgeMs >= 1_000 && f.oldestQueuedAgeMs < 60_000, String(f.oldestQueuedAgeMs));
        assert.deepEqual(figures.get("u/g")?.queued, 1);
        assert.equal(figures.get("u/h"), undefined);
      });
    });

    describe("whenFinished", () => {
      it("resolves at once for a call that has ended", async () => {
        const c = call();
        await store.enqueue(c);
        await take(store, "n1", 2_000);
        await store.finish(c.id, "n1", { state: "succeeded", response: undefined, figures: {} });
        assert.equal((await store.whenFinished(c.id)).state, "succeeded");
      });

      it("resolves when a call finishes, or is buried, later", async () => {
        const [a, b] = [call(), call()];
        await store.enqueue(a);
        await store.enqueue(b);
        const doneA = store.whenFinished(a.id);
        const doneB = store.whenFinished(b.id);
        await take(store, "n1", 2_000);
        assert.equal(await settled(doneA), false, "not before the call ends");
        await store.retry(a.id, "n1", 2_001, {});
        assert.equal(await settled(doneA), false, "a retry is not an end");
        await store.finish(b.id, "n1", {
          state: "failed",
          response: undefined,
          figures: { errorCode: "FN_EXIT" },
        });
        assert.equal((await doneB).errorCode, "FN_EXIT");
        await take(store, "n1", 3_000);
        await store.bury(a.id, "n1", {});
        assert.equal((await doneA).state, "dead");
      });

      it("stops waiting when its signal aborts, rejecting with the signal's reason", async () => {
        const c = call();
        await store.enqueue(c);
        const ac = new AbortController();
        const waiting = store.whenFinished(c.id, ac.signal);
        const reason = new Error("caller gone");
        ac.abort(reason);
        await assert.rejects(waiting, (err) => err === reason);
        await assert.rejects(store.whenFinished(c.id, AbortSignal.abort(reason)), (err) => err === reason);
        await take(store, "n1", 2_000);
        await store.finish(c.id, "n1", { state: "succeeded", response: undefined, figures: {} });
      });

      it("rejects with CALL_NOT_FOUND for an unknown call, and for one deleted while awaited", async () => {
        await rejectsWith(store.whenFinished(randomUUID()), "CALL_NOT_FOUND");
        const c = call();
        await store.enqueue(c);
        const waiting = store.whenFinished(c.id);
        await store.delete(c.id);
        await rejectsWith(waiting, "CALL_NOT_FOUND");
      });

      it("resolves for a sync call's record once it is written", async () => {
        const r = syncRecord();
        store.record(r);
        assert.equal((await store.whenFinished(r.id)).id, r.id);
      });
    });

    describe("records", () => {
      it("reads a record handed over, before and after it is flushed", async () => {
        const r = syncRecord({
          parentId: "p1",
          errorCode: "FN_TIMEOUT",
          errorMessage: "slow",
          status: undefined,
          state: "failed",
        });
        store.record(r);
        assert.deepEqual(await store.get(r.id), r, "a read sees what was handed over");
        await store.flush();
        assert.deepEqual(await store.get(r.id), r);
        assert.equal(await store.response(r.id), undefined, "a sync call keeps no result");
      });

      it("records a sync call's end as syncCallRecord reads it: answered, cut, failed before its head, forwarded", async () => {
        const now = Date.now();
        const ends = [
          syncEnd(),
          // Answered 200, then its body was cut: the figures' own message.
          syncEnd({}, { errorCode: "FN_TIMEOUT", errorMessage: "timed out after 50 ms" }),
          // No slot, no instance, no answer: the service's message, not the figures'.
          syncEnd(
            { errorMessage: "no instance within 10 s" },
            {
              startType: undefined,
              instanceId: undefined,
              queueWaitMs: 10_000,
              status: 0,
              errorCode: "QUEUE_TIMEOUT",
            },
          ),
          // A cold start on a node another one forwarded the call to.
          syncEnd(
            { node: "node-b", via: "node-a", placement: "spill" },
            { startType: "cold", initMs: 120.5 },
          ),
          // Ids as Fennec makes them, one millisecond apart: listed newest first by id.
        ].map((end, i) => ({ ...end, id: timeOrderedUuid(now + i) }));
        for (const end of ends) store.recordSync(end);
        const expected = ends.map(syncCallRecord);
        assert.equal(expected[1]!.errorMessage, "timed out after 50 ms");
        assert.equal(expected[2]!.status, undefined);
        assert.equal(expected[2]!.startedAt, undefined, "it never ran");
        assert.equal(expected[2]!.errorMessage, "no instance within 10 s");
        assert.equal(expected[3]!.startedAt, 1_121, "submitted, waited, started: in whole ms");
        for (const r of expected)
          assert.deepEqual(await store.get(r.id), r, "a read in the same turn sees it");
        await store.flush();
        for (const r of expected) assert.deepEqual(await store.get(r.id), r);
        const listed = await store.list({ function: "u/f", kind: "sync" });
        assert.deepEqual(
          listed.map((r) => r.id),
          expected.map((r) => r.id).reverse(),
          "newest first",
        );
        assert.equal((await store.whenFinished(expected[0]!.id)).state, "succeeded");
      });

      it("keeps where a forwarded call came in and why it went where it ran (a cluster's via and placement)", async () => {
        const r = syncRecord({ node: "node-b", via: "node-a", placement: "home" });
        store.record(r);
        assert.deepEqual(await store.get(r.id), r);
        await store.flush();
        assert.deepEqual(await store.get(r.id), r);
      });

      it("lists calls newest first, filtered by function, state, kind, status, error code, parent, since, limit", async () => {
        // As Fennec makes them: ids ordered by the time they were made (UUID v7), handed over in
        // another order than they were made in.
        const at = (t: number) => ({ id: timeOrderedUuid(t), submittedAt: t });
        const recs = [
          syncRecord({ function: "u/f", ...at(1), status: 200 }),
          syncRecord({ function: "u/g", ...at(2), status: 500, state: "failed" }),
          syncRecord({
            function: "u/f",
            ...at(3),
            status: undefined,
            errorCode: "FN_TIMEOUT",
            state: "failed",
          }),
          syncRecord({ function: "u/f", ...at(4), parentId: "p1", status: 200 }),
        ];
        for (const r of [recs[2]!, recs[0]!, recs[3]!, recs[1]!]) store.record(r);
        const a = call("u/f", at(5));
        await store.enqueue(a);
        const ids = (rs: CallRecord[]) => rs.map((r) => r.id);
        assert.deepEqual(ids(await store.list({})), [
          a.id,
          recs[3]!.id,
          recs[2]!.id,
          recs[1]!.id,
          recs[0]!.id,
        ]);
        assert.deepEqual(ids(await store.list({ function: "u/g" })), [recs[1]!.id]);
        assert.deepEqual(ids(await store.list({ state: "failed" })), [recs[2]!.id, recs[1]!.id]);
        assert.deepEqual(ids(await store.list({ kind: "async" })), [a.id]);
        assert.deepEqual(ids(await store.list({ kind: "sync", function: "u/f" })), [
          recs[3]!.id,
          recs[2]!.id,
          recs[0]!.id,
        ]);
        assert.deepEqual(ids(await store.list({ status: 500 })), [recs[1]!.id]);
        assert.deepEqual(ids(await store.list({ status: 200 })), [recs[3]!.id, recs[0]!.id]);
        assert.deepEqual(ids(await store.list({ status: "FN_TIMEOUT" })), [recs[2]!.id]);
        assert.deepEqual(ids(await store.list({ parentId: "p1" })), [recs[3]!.id]);
        assert.deepEqual(ids(await store.list({ since: 3 })), [a.id, recs[3]!.id, recs[2]!.id]);
        assert.deepEqual(ids(await store.list({ limit: 2 })), [a.id, recs[3]!.id]);
        assert.deepEqual(ids(await store.list({ state: "dead" })), []);
      });

      it("caps a listing at 1000 calls", async () => {
        for (let i = 0; i < 1005; i++) store.record(syncRecord({ submittedAt: i }));
        assert.equal((await store.list({ limit: 5000 })).length, 1000);
        assert.equal((await store.list({})).length, 100, "100 unless asked");
      });
    });

    describe("logs", () => {
      it("stores lines oldest first with increasing seq, filtered by function, call, since, afterSeq, limit", async () => {
        store.appendLogs([
          line({ text: "a", time: 1, callId: "c1" }),
          line({ text: "b", time: 2, function: "u/g" }),
          line({ text: "c", time: 3, callId: "c1", stream: "stdout" }),
        ]);
        store.appendLogs([line({ text: "d", time: 4 })]);
        const all = await store.logs({});
        assert.deepEqual(
          all.map((l) => l.text),
          ["a", "b", "c", "d"],
        );
        for (let i = 1; i < all.length; i++) assert.ok(all[i]!.seq > all[i - 1]!.seq);
        assert.equal(all[2]!.stream, "stdout");
        assert.equal(all[0]!.callId, "c1");
        assert.equal(all[0]!.instanceId, "i1");
        assert.equal(all[1]!.callId, undefined);
        const texts = (ls: StoredLogLine[]) => ls.map((l) => l.text);
        assert.deepEqual(texts(await store.logs({ function: "u/f" })), ["a", "c", "d"]);
        assert.deepEqual(texts(await store.logs({ callId: "c1" })), ["a", "c"]);
        assert.deepEqual(texts(await store.logs({ since: 3 })), ["c", "d"]);
        assert.deepEqual(texts(await store.logs({ afterSeq: all[1]!.seq })), ["c", "d"]);
        assert.deepEqual(texts(await store.logs({ limit: 2 })), ["a", "b"]);
      });

      it("tells followers of each matching line once it is stored, with its seq, until they stop", async () => {
        const seen: StoredLogLine[] = [];
        const byCall: StoredLogLine[] = [];
        const stop = store.followLogs({ function: "u/f" }, (l) => seen.push(l));
        const stopCall = store.followLogs({ callId: "c9" }, (l) => byCall.push(l));
        store.appendLogs([line({ text: "x" }), line({ text: "y", function: "u/g", callId: "c9" })]);
        await store.flush();
        assert.deepEqual(
          seen.map((l) => l.text),
          ["x"],
        );
        assert.deepEqual(
          byCall.map((l) => l.text),
          ["y"],
        );
        const stored = await store.logs({});
        assert.equal(seen[0]!.seq, stored[0]!.seq);
        stop();
        stopCall();
        store.appendLogs([line({ text: "z" })]);
        await store.flush();
        assert.equal(seen.length, 1, "a stopped follower hears nothing more");
        // A follower reading from its last seq gets exactly what came after.
        assert.deepEqual(
          (await store.logs({ afterSeq: seen[0]!.seq, function: "u/f" })).map((l) => l.text),
          ["z"],
        );
      });
    });

    describe("state", () => {
      it("gets, sets, writes at offsets (growing with zeros), appends, clears, deletes and lists keys per user", async () => {
        assert.equal(await store.stateGet("u", "k"), undefined);
        await store.stateSet("u", "k", enc("hello"));
        assert.equal(dec(await store.stateGet("u", "k")), "hello");
        await store.stateWrite("u", "k", 1, enc("EL"));
        assert.equal(dec(await store.stateGet("u", "k")), "hELlo");
        await store.stateWrite("u", "k", 7, enc("!"));
        assert.deepEqual([...(await store.stateGet("u", "k"))!], [...enc("hELlo"), 0, 0, ...enc("!")]);
        await store.stateWrite("u", "new", 2, enc("x"));
        assert.deepEqual([...(await store.stateGet("u", "new"))!], [0, 0, ...enc("x")]);
        await store.stateSet("u", "k", enc("s"));
        assert.equal(dec(await store.stateGet("u", "k")), "s", "a set replaces the whole value");

        await store.stateAppend("u", "log", enc("1"));
        await store.stateAppend("u", "log", enc("2"));
        assert.deepEqual((await store.stateAppended("u", "log")).map(dec), ["1", "2"]);
        assert.equal(await store.stateGet("u", "log"), undefined, "appends are apart from the value");
        assert.deepEqual(await store.stateAppended("u", "none"), []);

        await store.stateSet("other", "k", enc("theirs"));
        assert.deepEqual(await store.stateKeys("u"), ["k", "log", "new"]);
        assert.deepEqual(await store.stateKeys("other"), ["k"]);
        assert.equal(dec(await store.stateGet("u", "k")), "s", "users do not see each other's state");

        await store.stateClearAppended("u", "log");
        assert.deepEqual(await store.stateAppended("u", "log"), []);
        assert.equal(await store.stateDelete("u", "k"), true);
        assert.equal(await store.stateDelete("u", "k"), false);
        assert.equal(await store.stateGet("u", "k"), undefined);
        assert.deepEqual(await store.stateKeys("u"), ["new"]);
        await store.stateSet("u", "empty", new Uint8Array(0));
        assert.equal((await store.stateGet("u", "empty"))?.byteLength, 0, "an empty value is a value");
      });

      it("refuses an absurd offset or size instead of allocating it", async () => {
        await rejectsWith(store.stateWrite("u", "k", 2 ** 40, enc("x")), "STATE_TOO_LARGE");
        await assert.rejects(store.stateWrite("u", "k", -1, enc("x")), FennecError);
        assert.equal(await store.stateGet("u", "k"), undefined);
      });
    });

    describe("retention", () => {
      it("prunes finished calls, their results and log lines older than the maximum age; never queued or running ones", async () => {
        const old = syncRecord({ finishedAt: 1_000 });
        const young = syncRecord({ finishedAt: 9_500 });
        store.record(old);
        store.record(young);
        const [r, d, fin, q] = [1, 2, 3, 4].map((at) => call("u/f", { submittedAt: at }));
        for (const c of [r, d, fin, q]) await store.enqueue(c!);
        assert.equal((await take(store, "n1", 1_000, 3)).length, 3);
        await store.bury(d!.id, "n1", { finishedAt: 1_000 });
        await store.finish(fin!.id, "n1", {
          state: "succeeded",
          response: { status: 200, headers: [], body: enc("result") },
          figures: { finishedAt: 1_000 },
        });
        store.appendLogs([line({ time: 1_000, text: "old" }), line({ time: 9_900, text: "young" })]);

        const result = await store.prune({ maxAgeMs: 5_000, maxBytes: 2 ** 40 }, 10_000);
        assert.deepEqual(result, { calls: 3, logLines: 1 });
        assert.equal(await store.get(old.id), undefined);
        assert.equal(await store.get(d!.id), undefined, "an old dead letter goes with age");
        assert.equal(await store.get(fin!.id), undefined);
        assert.equal(await store.response(fin!.id), undefined);
        assert.ok(await store.get(young.id));
        assert.equal((await store.get(q!.id))?.state, "queued");
        assert.equal((await store.get(r!.id))?.state, "running");
        assert.deepEqual(
          (await store.logs({})).map((l) => l.text),
          ["young"],
        );
      });

      it("prunes the oldest finished calls and log lines until under the byte limit; keeps dead letters and queued calls", async () => {
        const kib = (n: number) => new Uint8Array(n * 1024);
        const finished: string[] = [];
        for (let i = 0; i < 10; i++) {
          const c = call("u/f", { submittedAt: i, request: request("", { body: kib(16) }) });
          await store.enqueue(c);
          await take(store, "n1", 100, 1);
          await store.finish(c.id, "n1", {
            state: "succeeded",
            response: { status: 200, headers: [], body: kib(16) },
            figures: { finishedAt: 1_000 + i },
          });
          finished.push(c.id);
        }
        const dead = call("u/f", { submittedAt: 0, request: request("", { body: kib(64) }) });
        await store.enqueue(dead);
        await take(store, "n1", 100, 1);
        await store.bury(dead.id, "n1", { finishedAt: 500 });
        const queued = call("u/f", {
          submittedAt: 0,
          request: request("", { body: kib(64) }),
          idempotencyKey: "q",
        });
        await store.enqueue(queued);
        store.appendLogs([line({ time: 1_004, text: "x".repeat(32 * 1024) })]);

        // Everything is young; bytes alone decide. 64 + 64 KiB must stay; 320 KiB of results and
        // 32 KiB of log go oldest first until the total is under 256 KiB.
        const result = await store.prune({ maxAgeMs: 1e12, maxBytes: 256 * 1024 }, 2_000);
        assert.ok(await store.get(dead.id), "a dead letter is never pruned by bytes");
        assert.equal((await store.get(queued.id))?.state, "queued");
        const kept = await Promise.all(finished.map(async (id) => (await store.get(id)) !== undefined));
        const firstKept = kept.indexOf(true);
        assert.ok(firstKept > 0, "the oldest went");
        assert.ok(
          kept.slice(firstKept).every((k) => k),
          `only the oldest went: ${kept.join(",")}`,
        );
        assert.ok(kept.filter((k) => k).length >= 2, `not more than needed: ${kept.join(",")}`);
        assert.ok(result.calls >= 1);
        const logs = await store.logs({});
        assert.equal(logs.length, 0, "the log line, older than the kept calls' results, went before them");
        assert.equal(result.logLines, 1);
        // A second prune under the limit removes nothing.
        assert.deepEqual(await store.prune({ maxAgeMs: 1e12, maxBytes: 256 * 1024 }, 2_000), {
          calls: 0,
          logLines: 0,
        });
        assert.ok((await store.sizeBytes()) > 0);
      });
    });

    describe("durability", () => {
      it("keeps calls, leases, results, dead letters, records, logs and state across a restart", async (t) => {
        if (!fx.reopen) return t.skip("the store keeps nothing across a restart");
        const [running, done, dead, queued] = [1, 2, 3, 4].map((at) => call("u/f", { submittedAt: at }));
        for (const c of [running, done, dead, queued]) await store.enqueue(c!);
        assert.equal((await take(store, "n1", 2_000, 3)).length, 3);
        await store.finish(done!.id, "n1", {
          state: "succeeded",
          response: { status: 200, headers: [["k", "v"]], body: enc("kept") },
          figures: {},
        });
        await store.bury(dead!.id, "n1", { errorCode: "FN_CRASHED" });
        const s = syncRecord();
        store.record(s);
        store.appendLogs([line({ text: "kept" })]);
        await store.stateSet("u", "k", enc("v"));
        await store.stateAppend("u", "k", enc("a"));
        const calls = [running!, done!, dead!, queued!];
        const before = await Promise.all(calls.map((c) => store.get(c.id)));
        assert.deepEqual(
          before.map((b) => b?.state),
          ["running", "succeeded", "dead", "queued"],
        );

        const after = await reopen();
        for (const [i, c] of calls.entries())
          assert.deepEqual(await after.get(c.id), before[i], `call ${i} as it was`);
        assert.equal(dec((await after.response(done!.id))?.body), "kept");
        assert.deepEqual(await after.get(s.id), s, "a record handed over before close() is kept");
        assert.deepEqual(
          (await after.logs({})).map((l) => l.text),
          ["kept"],
        );
        assert.equal(dec(await after.stateGet("u", "k")), "v");
        assert.deepEqual((await after.stateAppended("u", "k")).map(dec), ["a"]);
        // The node restarts: what it was running runs again.
        assert.equal(await after.requeueRunning("n1"), 1);
        const again = await take(after, "n1", 3_000, 10);
        assert.deepEqual(
          again.map((l) => [l.record.id, l.record.attempt]),
          [
            [running!.id, 2],
            [queued!.id, 1],
          ],
        );
        assert.ok(again.every((l) => dec(l.request.body) === "in"));
      });

      it("closes once, however often asked", async () => {
        store.record(syncRecord());
        await store.close();
        await store.close();
      });
    });
  });
}
