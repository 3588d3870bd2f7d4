import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { after, describe, it } from "node:test";
import type { CallHost } from "../../src/core/call-host.js";
import { FennecError } from "../../src/core/errors.js";
import { createLogger } from "../../src/core/log.js";
import type { InvokeRequest } from "../../src/core/types.js";
import { FakeDriver } from "../../src/sandbox/drivers/fake/driver.js";
import { ReadinessHub } from "../../src/sandbox/readiness.js";
import { Scheduler } from "../../src/scheduler/scheduler.js";
import { bodyOf, bytesOf } from "../helpers/body.js";
import { testConfig } from "../helpers/config.js";

/**
 * Slot lending (Scheduler.lend): a call that awaits a chained call does not count against its
 * function's max-instances, so a call of the same function gets another instance instead of
 * waiting for the slot its own caller holds; the memory budget still bounds that.
 */
describe("scheduler: an awaiting call lends its slot", () => {
  const driver = new FakeDriver();
  /** Calls whose body is "hold" answer with a body that ends only when released. */
  const held = new Map<string, PassThrough>();
  driver.behaviour.respond = (req, id) => {
    const text = (req.body as PassThrough & { text?: string }).text;
    if (text === "hold") {
      const body = new PassThrough();
      held.set(req.call!.callId, body);
      return { status: 200, headers: [["x-instance", id]], body };
    }
    return { status: 200, headers: [["x-instance", id]], body: req.body };
  };
  const config = testConfig({ maxInstances: 1, concurrentRequests: 1, queueTimeoutMs: 30_000 });
  const make = (budgetMiB: number) =>
    new Scheduler({
      configs: { resolve: () => Promise.resolve(config) },
      drivers: new Map([["container", driver]]),
      hub: new ReadinessHub(),
      callbackBase: () => "http://127.0.0.1:1/ready/",
      memoryBudgetMiB: budgetMiB,
      startTimeoutMs: 30_000,
      log: createLogger("silent"),
    });
  const schedulers: Scheduler[] = [];
  after(async () => {
    for (const b of held.values()) b.end();
    for (const s of schedulers) await s.close(1000);
  });

  const request = (text: string, callId: string): InvokeRequest => {
    const body = Object.assign(bodyOf(text), { text });
    return {
      method: "POST",
      path: "/",
      query: "",
      headers: {},
      body,
      call: { callId } as CallHost,
    };
  };

  it("starts another instance for a call of the same function at max-instances = 1 while the caller awaits", async () => {
    const s = make(10_000);
    schedulers.push(s);
    const caller = await s.invoke({ user: "default", name: "fn" }, request("hold", "caller"));
    assert.ok(!("error" in caller));
    assert.equal(s.canPlace("default/fn"), true, "a call not awaiting will end: placeable");
    const release = s.lend("caller");
    const child = await s.invoke({ user: "default", name: "fn" }, request("child", "child"));
    if ("error" in child) throw child.error;
    assert.equal((await bytesOf(child.response.body)).toString(), "child");
    assert.notEqual(
      child.response.headers.find(([n]) => n === "x-instance")?.[1],
      caller.response.headers.find(([n]) => n === "x-instance")?.[1],
      "the child never shares the blocked caller's instance",
    );
    release();
    held.get("caller")!.end("done");
    assert.equal((await bytesOf(caller.response.body)).toString(), "done");
  });

  it("says a call cannot be placed when every instance is lent and the budget has no room", async () => {
    // Room for one instance (the fake's 64 MiB), not two.
    const s = make(100);
    schedulers.push(s);
    const caller = await s.invoke({ user: "default", name: "fn" }, request("hold", "caller-2"));
    assert.ok(!("error" in caller));
    s.lend("caller-2");
    assert.equal(s.canPlace("default/fn"), false);
    // A call of it now is refused at once (NO_CAPACITY), not left waiting for a slot no one frees.
    const child = await s.invoke({ user: "default", name: "fn" }, request("child", "child-2"));
    assert.ok("error" in child);
    assert.ok(child.error instanceof FennecError);
    assert.equal(child.error.code, "NO_CAPACITY");
    held.get("caller-2")!.end();
  });
});
