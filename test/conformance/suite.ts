import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { createLogger } from "../../src/core/log.js";
import type { InvokeRequest } from "../../src/core/types.js";
import type { FunctionConfig } from "../../src/config/function-config.js";
import type { SandboxDriver } from "../../src/sandbox/contract.js";
import { Instance } from "../../src/sandbox/instance.js";
import { ReadinessHub } from "../../src/sandbox/readiness.js";
import { Scheduler } from "../../src/scheduler/scheduler.js";
import { bytesOf, bodyOf } from "../helpers/body.js";

/**
 * The one conformance suite every sandbox driver must pass. A driver's test supplies the driver
 * and three functions written for its sandbox:
 * - `echo`: answers 200 with the request body; puts the request's method, path, query and the
 *   `x-conformance` header into response headers `x-method`, `x-path`, `x-query`, `x-header`;
 * - `hang`: never answers (for timeouts);
 * - `fail`: fails every invocation in a way that is the function's fault.
 */
export interface ConformanceFixture {
  readonly driver: SandboxDriver;
  readonly echo: FunctionConfig;
  readonly hang: FunctionConfig;
  readonly fail: FunctionConfig;
  /** Releases what the fixture created (temp dirs, ...). */
  readonly cleanup?: () => Promise<void>;
}

const request = (over: Partial<InvokeRequest> = {}): InvokeRequest => ({
  method: "POST",
  path: "/a/b",
  query: "x=1&y=2",
  headers: { "x-conformance": "yes", "content-type": "text/plain" },
  body: bodyOf("hello conformance"),
  ...over,
});

export function runConformance(name: string, setup: () => Promise<ConformanceFixture>): void {
  describe(`driver conformance: ${name}`, () => {
    let fx: ConformanceFixture;
    const hub = new ReadinessHub();
    const instances: Instance[] = [];
    const started = async (config: FunctionConfig) => {
      const inst = new Instance({
        id: `conf-${instances.length}-${process.pid}`,
        driver: fx.driver,
        config,
        origin: "cold",
        hub,
        callbackBase,
        startTimeoutMs: 60_000,
      });
      instances.push(inst);
      await inst.start();
      return inst;
    };

    // Out-of-process instances call back over real HTTP, as they would call the gateway.
    let callbackBase = "";
    const callbacks = createServer((req, res) => {
      hub.signal(decodeURIComponent((req.url ?? "").replace(/^\/ready\//, "")));
      res.writeHead(200, { connection: "close" }).end("ok");
    });

    before(async () => {
      await new Promise<void>((r) => callbacks.listen(0, "127.0.0.1", () => r()));
      callbackBase = `http://127.0.0.1:${(callbacks.address() as AddressInfo).port}/ready/`;
      fx = await setup();
      await fx.driver.cleanupStale?.();
    });
    after(async () => {
      await Promise.all(instances.map((i) => i.destroy()));
      await fx.driver.close?.();
      await fx.cleanup?.();
      await new Promise((r) => callbacks.close(r));
    });

    it("has a name and capabilities", () => {
      assert.equal(typeof fx.driver.name, "string");
      assert.equal(typeof fx.driver.capabilities.memoryLimit, "boolean");
      assert.ok(fx.driver.memoryMiB(fx.echo) > 0);
    });

    it("starts an instance that reaches ready", async () => {
      const inst = await started(fx.echo);
      assert.equal(inst.state, "ready");
      assert.ok(inst.initMs > 0);
    });

    it("passes method, path, query, headers and body through, and the response back", async () => {
      const inst = await started(fx.echo);
      const res = await inst.invoke(request());
      assert.equal(res.status, 200);
      assert.equal((await bytesOf(res.body)).toString(), "hello conformance");
      const h = new Map(res.headers.map(([k, v]) => [k.toLowerCase(), v]));
      assert.equal(h.get("x-method"), "POST");
      assert.equal(h.get("x-path"), "/a/b");
      assert.equal(h.get("x-query"), "x=1&y=2");
      assert.equal(h.get("x-header"), "yes");
    });

    it("serves many invocations in a row on one instance", async () => {
      const inst = await started(fx.echo);
      for (let i = 0; i < 20; i++) {
        const res = await inst.invoke(request({ body: bodyOf(`n${i}`) }));
        assert.equal((await bytesOf(res.body)).toString(), `n${i}`);
      }
      assert.equal(inst.uses, 20);
    });

    it("passes binary and empty bodies unchanged", async () => {
      const inst = await started(fx.echo);
      const binary = Buffer.from(Array.from({ length: 256 * 64 }, (_, i) => i % 256));
      assert.deepEqual(await bytesOf((await inst.invoke(request({ body: bodyOf(binary) }))).body), binary);
      const empty = await inst.invoke(
        request({ body: bodyOf(), method: "GET", headers: { "content-length": "0" } }),
      );
      assert.equal((await bytesOf(empty.body)).byteLength, 0);
    });

    it("reports the function's failure with an FN_ code", async () => {
      const inst = await started(fx.fail);
      await assert.rejects(
        inst.invoke(request()),
        (err: { code?: string }) => typeof err.code === "string" && err.code.startsWith("FN_"),
      );
    });

    it("stops a hanging invocation at the timeout with FN_TIMEOUT and destroys the instance", async () => {
      const inst = await started({ ...fx.hang, timeoutMs: 300 });
      await assert.rejects(inst.invoke(request()), { code: "FN_TIMEOUT" });
      await inst.stopped;
      assert.equal(inst.state, "failed");
    });

    it("close drains an in-flight invocation; close and destroy are idempotent", async () => {
      const inst = await started(fx.echo);
      const pending = inst.invoke(request());
      const closing = inst.close();
      assert.equal((await bytesOf((await pending).body)).toString(), "hello conformance");
      await Promise.all([closing, inst.close(), inst.destroy()]);
      assert.equal(inst.state, "stopped");
      await assert.rejects(inst.invoke(request()), { code: "INSTANCE_GONE" });
    });

    it("destroy stops an instance in the middle of an invocation", async () => {
      const inst = await started({ ...fx.hang, timeoutMs: 30_000 });
      const rejected = assert.rejects(inst.invoke(request()));
      await new Promise((r) => setTimeout(r, 50));
      await Promise.all([inst.destroy(), inst.destroy()]);
      await rejected;
      assert.ok(inst.state === "stopped" || inst.state === "failed");
    });

    it("runs under the scheduler: cold, then warm, with records", async () => {
      const scheduler = new Scheduler({
        configs: { resolve: async () => fx.echo },
        drivers: new Map([[fx.echo.sandbox.kind, fx.driver]]),
        hub,
        callbackBase: () => callbackBase,
        memoryBudgetMiB: 100_000,
        startTimeoutMs: 60_000,
        log: createLogger("silent"),
      });
      try {
        // An invocation lasts until its response body is read: then the instance is free again.
        const first = await scheduler.invoke(fx.echo.id, request());
        assert.ok(!("error" in first));
        assert.equal((await bytesOf(first.response.body)).toString(), "hello conformance");
        const second = await scheduler.invoke(fx.echo.id, request());
        assert.ok(!("error" in second));
        await bytesOf(second.response.body);
        assert.equal(first.start.startType, "cold");
        assert.equal(second.start.startType, "warm");
        const record = await second.record;
        assert.equal(record.status, 200);
        assert.ok(record.ttfbMs <= record.execMs);
      } finally {
        // Only this scheduler's instances: the driver stays open for the rest of the suite.
        for (const pool of scheduler.pools().values())
          await Promise.all(pool.instances.map((i) => i.close()));
      }
    });
  });
}
