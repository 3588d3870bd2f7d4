import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { LocalNode } from "../../src/cluster/local-node.js";
import type { HostProbe } from "../../src/cluster/sandboxes.js";
import { createLogger } from "../../src/core/log.js";
import type { InvokeRequest } from "../../src/core/types.js";
import { FakeDriver } from "../../src/sandbox/drivers/fake/driver.js";
import { ReadinessHub } from "../../src/sandbox/readiness.js";
import { Scheduler } from "../../src/scheduler/scheduler.js";
import { bodyOf, bytesOf } from "../helpers/body.js";
import { testConfig } from "../helpers/config.js";
import { waitFor } from "../helpers/wait.js";

const req = (): InvokeRequest => ({ method: "POST", path: "/", query: "", headers: {}, body: bodyOf("x") });
const bareHost: HostProbe = {
  executable: () => "not here",
  firecracker: async () => "not here",
  guestKernel: async () => "not here",
  docker: async () => ({ error: "not here" }),
};

describe("a node's load, as membership publishes it (FunctionPool.load, LocalNode)", () => {
  it("counts warm instances, free slots and calls in flight per function; memory from the scheduler", async () => {
    const driver = new FakeDriver();
    driver.behaviour.invokeDelayMs = 300;
    const config = testConfig({ concurrentRequests: 3 });
    const scheduler = new Scheduler({
      configs: { resolve: async () => config },
      drivers: new Map([["container", driver]]),
      hub: new ReadinessHub(),
      callbackBase: () => "http://127.0.0.1:1/ready/",
      memoryBudgetMiB: 1000,
      startTimeoutMs: 30_000,
      log: createLogger("silent"),
    });
    const node = await LocalNode.start({
      scheduler,
      drivers: new Map([["container", driver]]),
      log: createLogger("silent"),
      host: bareHost,
    });
    try {
      assert.deepEqual(node.state().functions, {});
      const id = { user: "default", name: "fn" };
      const calls = [scheduler.invoke(id, req()), scheduler.invoke(id, req())];
      await waitFor("two calls in flight on one instance", () => node.state().inFlight === 2);
      const busy = node.state();
      assert.deepEqual(busy.functions["default/fn"], {
        revision: "r1",
        warm: 1,
        freeSlots: 1,
        memoryMiB: driver.memoryMiB(config),
      });
      assert.equal(busy.memory.budgetMiB, 1000);
      assert.equal(busy.memory.reservedMiB, driver.memoryMiB(config));
      // The container kind's driver is there, its engine is not: said so.
      assert.match(busy.missing["container"]!, /not here/);
      for (const out of await Promise.all(calls)) {
        assert.ok(!("error" in out));
        await bytesOf(out.response.body);
      }
      await waitFor("the calls to end", () => node.state().inFlight === 0);
      assert.equal(node.state().functions["default/fn"]?.freeSlots, 3);
    } finally {
      node.close();
      await scheduler.close(1000);
    }
  });
});
