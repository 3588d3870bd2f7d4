import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { FennecError } from "../../src/core/errors.js";
import { channels } from "../../src/core/events.js";
import { createLogger } from "../../src/core/log.js";
import type { FunctionId, InvocationRecord, InvokeRequest } from "../../src/core/types.js";
import type { FunctionConfig } from "../../src/config/function-config.js";
import { FakeDriver } from "../../src/sandbox/drivers/fake/driver.js";
import { ReadinessHub } from "../../src/sandbox/readiness.js";
import { Scheduler } from "../../src/scheduler/scheduler.js";
import { testConfig } from "../helpers/config.js";
import { waitFor } from "../helpers/wait.js";
import { bytesOf, bodyOf } from "../helpers/body.js";

const req = (body = "x"): InvokeRequest => ({
  method: "POST",
  path: "/",
  query: "",
  headers: {},
  body: bodyOf(body),
});
const fnId = (name: string): FunctionId => ({ user: "default", name });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Setup {
  scheduler: Scheduler;
  driver: FakeDriver;
  configs: Map<string, FunctionConfig>;
  records: InvocationRecord[];
}

const open: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const close of open.splice(0)) await close();
});

function setup(
  fns: Array<Partial<FunctionConfig>>,
  budgetMiB = 10_000,
  // Generous: a start that should succeed must not fail because the machine is busy.
  startTimeoutMs = 30_000,
): Setup {
  const driver = new FakeDriver();
  const configs = new Map<string, FunctionConfig>();
  for (const f of fns) {
    const c = testConfig(f);
    configs.set(c.key, c);
  }
  const scheduler = new Scheduler({
    configs: {
      resolve: async (id) => {
        const c = configs.get(`${id.user}/${id.name}`);
        if (!c) throw new FennecError("FUNCTION_NOT_FOUND", "nope");
        return c;
      },
    },
    drivers: new Map([["container", driver]]),
    hub: new ReadinessHub(),
    callbackBase: () => "http://127.0.0.1:1/ready/",
    memoryBudgetMiB: budgetMiB,
    startTimeoutMs,
    log: createLogger("silent"),
    reapIntervalMs: 20,
  });
  const records: InvocationRecord[] = [];
  const listener = (m: unknown) => records.push(m as InvocationRecord);
  channels.invocation.subscribe(listener);
  open.push(async () => {
    channels.invocation.unsubscribe(listener);
    await scheduler.close(1000);
  });
  return { scheduler, driver, configs, records };
}

/** Invokes and reads the response to its end, as a client would: the invocation is over then. */
async function ok(s: Scheduler, name: string, body = "x") {
  const out = await s.invoke(fnId(name), req(body));
  if ("error" in out) throw out.error;
  return { body: await bytesOf(out.response.body), record: await out.record };
}

describe("scheduler", () => {
  it("starts cold once, then reuses the warm instance", async () => {
    const { scheduler, driver } = setup([{ id: fnId("a") }]);
    const first = await ok(scheduler, "a");
    const second = await ok(scheduler, "a");
    assert.equal(first.record.startType, "cold");
    assert.equal(second.record.startType, "warm");
    assert.equal(first.record.instanceId, second.record.instanceId);
    assert.equal(driver.starts, 1);
    assert.equal(second.body.toString(), "x");
  });

  it("honours concurrent-requests: N parallel calls share one instance with N slots", async () => {
    const { scheduler, driver } = setup([{ id: fnId("a"), concurrentRequests: 3 }]);
    driver.behaviour.invokeDelayMs = 30;
    await ok(scheduler, "a");
    const results = await Promise.all([1, 2, 3].map(() => ok(scheduler, "a")));
    assert.equal(driver.starts, 1);
    assert.equal(new Set(results.map((r) => r.record.instanceId)).size, 1);
  });

  it("starts a new instance per concurrent request when concurrent-requests is 1", async () => {
    const { scheduler, driver } = setup([{ id: fnId("a"), maxInstances: 10 }]);
    driver.behaviour.invokeDelayMs = 30;
    driver.behaviour.startDelayMs = 10;
    const results = await Promise.all([1, 2, 3, 4].map(() => ok(scheduler, "a")));
    assert.equal(driver.starts, 4);
    assert.equal(new Set(results.map((r) => r.record.instanceId)).size, 4);
    assert.ok(results.every((r) => r.record.startType === "cold" && r.record.initMs >= 5));
  });

  it("single-use instances serve exactly one invocation and are then destroyed", async () => {
    const { scheduler, driver } = setup([{ id: fnId("a"), singleUse: true }]);
    const a = await ok(scheduler, "a");
    const b = await ok(scheduler, "a");
    assert.notEqual(a.record.instanceId, b.record.instanceId);
    assert.equal(b.record.startType, "cold");
    await waitFor("the used instances to be destroyed", () => driver.live.size === 0);
  });

  it("caps instances at max-instances and holds the rest in the queue (cold requests are held, not bounced)", async () => {
    const { scheduler, driver, records } = setup([{ id: fnId("a"), maxInstances: 2 }]);
    driver.behaviour.invokeDelayMs = 40;
    const results = await Promise.all([1, 2, 3, 4, 5, 6].map(() => ok(scheduler, "a")));
    assert.equal(driver.starts, 2);
    assert.equal(results.length, 6);
    const waited = records.filter((r) => r.queueWaitMs >= 30);
    assert.ok(waited.length >= 2, "later requests waited in the queue");
  });

  it("answers QUEUE_FULL when the bounded queue overflows, and QUEUE_TIMEOUT at the deadline", async () => {
    const { scheduler, driver } = setup([
      { id: fnId("a"), maxInstances: 1, maxQueue: 1, queueTimeoutMs: 60 },
    ]);
    driver.behaviour.invokeDelayMs = 200;
    const running = scheduler.invoke(fnId("a"), req());
    await sleep(10);
    const queued = scheduler.invoke(fnId("a"), req());
    const overflow = await scheduler.invoke(fnId("a"), req());
    assert.ok("error" in overflow && overflow.error.code === "QUEUE_FULL");
    const late = await queued;
    assert.ok("error" in late && late.error.code === "QUEUE_TIMEOUT");
    assert.ok(!("error" in (await running)));
  });

  it("reaps instances idle past keepalive (scale to zero) but keeps min-instances", async () => {
    const { scheduler, driver } = setup([
      { id: fnId("a"), keepaliveMs: 30 },
      { id: fnId("b"), keepaliveMs: 30, minInstances: 1 },
    ]);
    await ok(scheduler, "a");
    await ok(scheduler, "b");
    assert.equal(driver.live.size, 2);
    await waitFor("a to be reaped", () => driver.live.size < 2);
    assert.equal(driver.live.size, 1, "a scaled to zero, b kept its floor");
    assert.equal(scheduler.pools().get("default/b")?.counts().ready, 1);
  });

  it("pre-boots instances, whose first invocation is recorded as pre-booted", async () => {
    const { scheduler, driver } = setup([{ id: fnId("a"), maxInstances: 5 }]);
    const result = await scheduler.preBoot(fnId("a"), 3);
    assert.equal(result.started, 3);
    assert.equal(driver.live.size, 3);
    const out = await ok(scheduler, "a");
    assert.equal(out.record.startType, "prebooted");
    assert.equal(out.record.initMs, 0);
    assert.equal(driver.starts, 3);
  });

  it("evicts the least recently used idle instance of another function when memory runs out", async () => {
    const { scheduler, driver } = setup([{ id: fnId("a") }, { id: fnId("b") }, { id: fnId("c") }], 128);
    driver.behaviour.memoryMiB = 64;
    const a = await ok(scheduler, "a");
    await sleep(5);
    const b = await ok(scheduler, "b");
    await ok(scheduler, "c");
    await waitFor("an instance to be evicted", () => driver.live.size < 3);
    assert.ok(!driver.live.has(a.record.instanceId!), "a (least recently used) was evicted");
    assert.ok(driver.live.has(b.record.instanceId!));
    assert.equal(scheduler.memoryUsedMiB, 128);
  });

  it("answers NO_CAPACITY when nothing idle can be evicted", async () => {
    const { scheduler, driver } = setup([{ id: fnId("a") }, { id: fnId("b") }], 64);
    driver.behaviour.memoryMiB = 64;
    driver.behaviour.invokeDelayMs = 500;
    const busy = scheduler.invoke(fnId("a"), req());
    await waitFor("a to be busy", () => scheduler.pools().get("default/a")?.counts().busy === 1);
    const out = await scheduler.invoke(fnId("b"), req());
    assert.ok("error" in out && out.error.code === "NO_CAPACITY", JSON.stringify(out));
    await busy;
  });

  it("gives queued cold requests the start error instead of holding them to their deadline", async () => {
    const { scheduler, driver } = setup([{ id: fnId("a") }]);
    driver.behaviour.startError = new FennecError("FN_BAD_MODULE", "broken");
    const outs = await Promise.all([1, 2, 3].map(() => scheduler.invoke(fnId("a"), req())));
    for (const out of outs) assert.ok("error" in out && out.error.code === "FN_BAD_MODULE");
    assert.equal(scheduler.lastError("default/a")?.code, "FN_BAD_MODULE");
    driver.behaviour.startError = undefined;
    await ok(scheduler, "a");
    assert.equal(scheduler.lastError("default/a"), undefined, "a successful start clears the error");
  });

  it("fails a start that never becomes ready with FN_INIT_TIMEOUT and leaves nothing behind", async () => {
    // The start deadline is what this test is about: a small one, and the test waits for its error.
    const { scheduler, driver } = setup([{ id: fnId("a") }], 10_000, 500);
    driver.behaviour.hangOnStart = true;
    const out = await scheduler.invoke(fnId("a"), req());
    assert.ok("error" in out && out.error.code === "FN_INIT_TIMEOUT");
    assert.equal(driver.live.size, 0);
    assert.equal(scheduler.memoryUsedMiB, 0);
  });

  it("times out a slow invocation with FN_TIMEOUT, destroys that instance and serves the next call", async () => {
    const { scheduler, driver } = setup([{ id: fnId("a"), timeoutMs: 50 }]);
    driver.behaviour.invokeDelayMs = 1000;
    const out = await scheduler.invoke(fnId("a"), req());
    assert.ok("error" in out && out.error.code === "FN_TIMEOUT");
    await waitFor("the timed-out instance to be destroyed", () => driver.destroys > 0);
    assert.equal(driver.destroys, 1);
    driver.behaviour.invokeDelayMs = 0;
    const next = await ok(scheduler, "a");
    assert.equal(next.record.startType, "cold");
  });

  it("replaces an instance that crashes on its own", async () => {
    const { scheduler, driver } = setup([{ id: fnId("a") }]);
    const first = await ok(scheduler, "a");
    driver.crash(first.record.instanceId!);
    await sleep(5);
    const second = await ok(scheduler, "a");
    assert.notEqual(first.record.instanceId, second.record.instanceId);
  });

  it("moves to a new config revision: old instances take no new work", async () => {
    const { scheduler, configs, driver } = setup([{ id: fnId("a"), concurrentRequests: 1 }]);
    driver.behaviour.invokeDelayMs = 20;
    const first = await ok(scheduler, "a");
    configs.set("default/a", { ...configs.get("default/a")!, revision: "r2" });
    await sleep(300); // under load the config is re-read at most every 250 ms
    // Busy the old instance so the next call takes the cold (re-reading) path.
    const busy = ok(scheduler, "a");
    const second = await ok(scheduler, "a");
    await busy;
    await waitFor("the old revision's instance to close", () => !driver.live.has(first.record.instanceId!));
    assert.notEqual(first.record.instanceId, second.record.instanceId);
    assert.ok(!driver.live.has(first.record.instanceId!), "the old revision's instance was closed");
  });

  it("becomes ready through the readiness callback hub", async () => {
    const hub = new ReadinessHub();
    const ac = new AbortController();
    hub.expect("i1");
    assert.equal(hub.signal("i1"), true, "an early callback is remembered");
    await hub.wait("i1", ac.signal);
    assert.equal(hub.signal("unknown"), false);
    hub.forget("i1");
  });

  it("drains in-flight invocations on close, then stops every instance", async () => {
    const { scheduler, driver } = setup([{ id: fnId("a"), maxInstances: 3 }]);
    driver.behaviour.invokeDelayMs = 80;
    const inflight = [1, 2, 3].map(() => scheduler.invoke(fnId("a"), req()));
    await sleep(20);
    await scheduler.close(2000);
    for (const out of await Promise.all(inflight)) assert.ok(!("error" in out), "in-flight calls completed");
    assert.equal(driver.live.size, 0);
    const late = await scheduler.invoke(fnId("a"), req());
    assert.ok("error" in late && late.error.code === "SHUTTING_DOWN");
  });

  it("gives a caller whose queue wait ran out while its start was under way that start's own error", async () => {
    const { scheduler, driver } = setup([{ id: fnId("a"), queueTimeoutMs: 20 }]);
    // The start outlasts queue-timeout, then fails: the caller learns why, not QUEUE_TIMEOUT.
    driver.behaviour.startDelayMs = 200;
    driver.behaviour.startError = new FennecError("FN_CRASHED", "the guest died while booting");
    const crashed = await scheduler.invoke(fnId("a"), req());
    assert.ok("error" in crashed);
    assert.equal(crashed.error.code, "FN_CRASHED");
    assert.match(crashed.error.message, /died while booting/);
    // A start that never becomes ready ends at its own deadline (the scheduler's 500 ms here).
    driver.behaviour.startError = undefined;
    driver.behaviour.hangOnStart = true;
    const hung = await scheduler.invoke(fnId("a"), req());
    assert.ok("error" in hung);
    assert.equal(hung.error.code, "FN_INIT_TIMEOUT");
  });

  it("serves a caller whose queue wait ran out while its start was under way once that start succeeds", async () => {
    const { scheduler, driver } = setup([{ id: fnId("a"), queueTimeoutMs: 20 }]);
    driver.behaviour.startDelayMs = 200;
    const out = await ok(scheduler, "a", "late but served");
    assert.equal(out.record.startType, "cold");
    assert.equal(out.body.toString(), "late but served");
  });

  it("still times out, at queue-timeout, a caller no start is meant for (max-instances reached)", async () => {
    const { scheduler, driver } = setup([{ id: fnId("a"), queueTimeoutMs: 20, maxInstances: 1 }]);
    driver.behaviour.startDelayMs = 200;
    driver.behaviour.invokeDelayMs = 200;
    const first = scheduler.invoke(fnId("a"), req());
    const second = await scheduler.invoke(fnId("a"), req());
    assert.ok("error" in second);
    assert.equal(second.error.code, "QUEUE_TIMEOUT");
    assert.ok(!("error" in (await first)));
  });

  it("stops a warm instance whose function was deleted, and retires one whose config changed, though it has free slots", async () => {
    const { scheduler, driver, configs } = setup([
      { id: fnId("a"), concurrentRequests: 4 },
      { id: fnId("b"), concurrentRequests: 4 },
    ]);
    const a = await ok(scheduler, "a");
    const b = await ok(scheduler, "b");
    // The warm path never reads the config; the reaper must notice on its own.
    configs.delete("default/a");
    configs.set("default/b", { ...configs.get("default/b")!, revision: "r2" });
    await waitFor("the deleted function's instance stopped", () => !driver.live.has(a.record.instanceId!));
    await waitFor("the old revision's instance closed", () => !driver.live.has(b.record.instanceId!));
    assert.equal(scheduler.pools().has("default/a"), false);
    const gone = await scheduler.invoke(fnId("a"), req());
    assert.ok("error" in gone && gone.error.code === "FUNCTION_NOT_FOUND");
    const next = await ok(scheduler, "b");
    assert.notEqual(next.record.instanceId, b.record.instanceId);
  });
});
