import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { bodyOf, WholeBody } from "../../src/core/body.js";
import { FennecError } from "../../src/core/errors.js";
import { createLogger } from "../../src/core/log.js";
import type { InvokeRequest, InvokeResponse } from "../../src/core/types.js";
import type { FunctionConfig } from "../../src/config/function-config.js";
import type { SandboxDriver, SandboxHandle } from "../../src/sandbox/contract.js";
import { Instance } from "../../src/sandbox/instance.js";
import { ReadinessHub } from "../../src/sandbox/readiness.js";
import { Scheduler } from "../../src/scheduler/scheduler.js";
import { testConfig } from "../helpers/config.js";

/**
 * A call the sandbox answers at once (`SandboxHandle.invokeNow`, the wasm driver's calls on the
 * gateway's thread) is answered at once by the lifecycle too, with no timer of its own; what
 * it throws is thrown at once; and the scheduler serves such calls, failing ones included.
 */

const request = (body = "ping"): InvokeRequest => ({
  method: "POST",
  path: "/",
  query: "",
  headers: {},
  body: bodyOf(body),
});

/** A sandbox answering every call at once, echoing its body; `fail` makes it throw instead. */
class NowHandle implements SandboxHandle {
  fail: FennecError | undefined;
  invoke(): Promise<InvokeResponse> {
    return Promise.reject(new Error("the lifecycle should have asked invokeNow"));
  }
  invokeNow(req: InvokeRequest): InvokeResponse {
    if (this.fail) throw this.fail;
    const bytes = (req.body as WholeBody).takeBytes() ?? Buffer.alloc(0);
    return { status: 200, headers: [["content-type", "text/plain"]], body: new WholeBody(bytes) };
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
  destroy(): Promise<void> {
    return Promise.resolve();
  }
}

class NowDriver implements SandboxDriver {
  readonly name = "now";
  readonly capabilities = { snapshot: false } as const;
  readonly handles: NowHandle[] = [];
  start(): Promise<SandboxHandle> {
    const handle = new NowHandle();
    this.handles.push(handle);
    return Promise.resolve(handle);
  }
  memoryMiB(): number {
    return 1;
  }
}

const config = (over: Partial<FunctionConfig> = {}) =>
  testConfig({ id: { user: "default", name: "now" }, key: "default/now", ...over });

const open: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const close of open.splice(0)) await close();
});

async function started(
  over: Partial<FunctionConfig> = {},
): Promise<{ instance: Instance; handle: NowHandle }> {
  const driver = new NowDriver();
  const instance = new Instance({
    id: "now-1",
    driver,
    config: config(over),
    origin: "cold",
    hub: new ReadinessHub(),
    callbackBase: "http://127.0.0.1:1/ready/",
    startTimeoutMs: 30_000,
  });
  await instance.start();
  open.push(() => instance.destroy());
  return { instance, handle: driver.handles[0]! };
}

describe("calls a sandbox answers at once", () => {
  it("are answered at once by the instance, over before it returns, with no timer armed", async () => {
    const { instance } = await started();
    const timers = process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
    const answer = instance.run(request("hello"));
    assert.ok(!(answer instanceof Promise), "a value, not a promise");
    assert.equal(instance.active, 0, "the invocation is over");
    assert.equal(instance.state, "ready");
    assert.equal(instance.uses, 1);
    assert.equal(process.getActiveResourcesInfo().filter((r) => r === "Timeout").length, timers);
    assert.equal((answer.body as WholeBody).takeBytes()?.toString(), "hello");
    const end = await answer.ended;
    assert.equal(end.error, undefined);
    assert.ok(end.execMs >= 0 && end.ttfbMs === end.execMs);
    // invoke() still answers with a promise, as for every other sandbox.
    const later = await instance.invoke(request("again"));
    assert.equal((later.body as WholeBody).takeBytes()?.toString(), "again");
  });

  it("throw what the sandbox threw at once, and free the slot", async () => {
    const { instance, handle } = await started();
    handle.fail = new FennecError("FN_TRAP", "the module trapped");
    assert.throws(() => instance.run(request()), { code: "FN_TRAP" });
    assert.equal(instance.active, 0);
    await assert.rejects(instance.invoke(request()), { code: "FN_TRAP" });
    assert.equal(instance.uses, 2);
  });

  it("still refuse an answer larger than max-response-body", async () => {
    const { instance } = await started({ maxResponseBodyBytes: 3 });
    assert.throws(() => instance.run(request("four")), { code: "FN_RESPONSE_TOO_LARGE" });
    assert.equal(instance.active, 0);
  });

  it("are served by the scheduler, and a queue of calls that all fail does not recurse through the pool", async () => {
    const driver = new NowDriver();
    const scheduler = new Scheduler({
      configs: { resolve: () => Promise.resolve(config({ maxQueue: 50_000, concurrentRequests: 1 })) },
      drivers: new Map([["container", driver]]),
      hub: new ReadinessHub(),
      callbackBase: () => "http://127.0.0.1:1/ready/",
      memoryBudgetMiB: 1000,
      startTimeoutMs: 30_000,
      log: createLogger("silent"),
    });
    open.push(() => scheduler.close(0));
    const id = { user: "default", name: "now" };
    const ok = await scheduler.invoke(id, request("warm"));
    assert.ok(!("error" in ok));
    assert.equal((ok.response.body as WholeBody).takeBytes()?.toString(), "warm");
    assert.equal((await ok.record).status, 200);
    // Calls queued behind a start are dispatched in one loop when the instance is ready: each
    // failing at once must not release and dispatch the next from inside the one before.
    driver.handles[0]!.fail = new FennecError("FN_TRAP", "the module trapped");
    await scheduler.close(0);
    const second = new Scheduler({
      configs: { resolve: () => Promise.resolve(config({ maxQueue: 50_000, concurrentRequests: 1 })) },
      drivers: new Map([["container", new FailingNowDriver()]]),
      hub: new ReadinessHub(),
      callbackBase: () => "http://127.0.0.1:1/ready/",
      memoryBudgetMiB: 1000,
      startTimeoutMs: 30_000,
      log: createLogger("silent"),
    });
    open.push(() => second.close(0));
    const outcomes = await Promise.all(Array.from({ length: 20_000 }, () => second.invoke(id, request())));
    assert.ok(outcomes.every((o) => "error" in o && o.error.code === "FN_TRAP"));
  });
});

/** Answers every call at once with a trap, after a start that takes a turn (so calls queue). */
class FailingNowDriver extends NowDriver {
  override start(): Promise<SandboxHandle> {
    const handle = new NowHandle();
    handle.fail = new FennecError("FN_TRAP", "the module trapped");
    this.handles.push(handle);
    return new Promise((resolve) => setTimeout(() => resolve(handle), 20));
  }
}
