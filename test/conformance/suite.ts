import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";

import { PassThrough, Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { createLogger } from "../../src/core/log.js";
import type { InvokeRequest } from "../../src/core/types.js";
import type { FunctionConfig } from "../../src/config/function-config.js";
import type { SandboxDriver } from "../../src/sandbox/contract.js";
import { Instance } from "../../src/sandbox/instance.js";
import { ReadinessHub } from "../../src/sandbox/readiness.js";
import { Scheduler } from "../../src/scheduler/scheduler.js";
import { lifecycleCases, type LifecycleFixture } from "./lifecycle.js";
import { bytesOf, bodyOf } from "../helpers/body.js";

/**
 * The one conformance suite every sandbox driver must pass. A driver's test supplies the driver
 * and three functions written for its sandbox:
 * - `echo`: answers 200 with the request body; puts the request's method, path, query and the
 *   `x-conformance` header into response headers `x-method`, `x-path`, `x-query`, `x-header`;
 * - `hang`: never answers (for timeouts);
 * - `fail`: fails every invocation in a way that is the function's fault;
 * and what the lifecycle cases need (lifecycle.ts): how its instances die, where they leave things.
 */
export interface ConformanceFixture extends LifecycleFixture {
  readonly driver: SandboxDriver;
  readonly echo: FunctionConfig;
  readonly hang: FunctionConfig;
  readonly fail: FunctionConfig;
  /** Releases what the fixture created (temp dirs, ...). */
  readonly cleanup?: () => Promise<void>;
  /**
   * Whether `echo` serves the streaming routes under `/stream/` (see `streamingCases`); a driver
   * whose echo cannot says why, and those cases are skipped with that reason.
   */
  readonly streaming?: { readonly skip: string };
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
    // Ids name run directories, containers and cgroups: unique across every suite and test file,
    // so no suite can mistake another's leftovers for its own (or its own for none).
    const create = (config: FunctionConfig) => {
      const inst = new Instance({
        id: `conf-${instances.length}-${randomBytes(4).toString("hex")}`,
        driver: fx.driver,
        config,
        origin: "cold",
        hub,
        callbackBase,
        startTimeoutMs: 60_000,
      });
      instances.push(inst);
      return inst;
    };
    const started = async (config: FunctionConfig) => {
      const inst = create(config);
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
      assert.equal(typeof fx.driver.capabilities.snapshot, "boolean");
      assert.ok(fx.driver.memoryMiB(fx.echo) > 0);
    });

    it("starts an instance that reaches ready", async () => {
      const inst = await started(fx.echo);
      assert.equal(inst.state, "ready");
      assert.ok(inst.initMs > 0);
      // Only a driver that declares snapshots may serve a cold start from one.
      if (!fx.driver.capabilities.snapshot) assert.equal(inst.origin, "cold");
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

    // ---- lifecycle: releasing everything, dying, running out of memory (lifecycle.ts) ----
    lifecycleCases({ fixture: () => fx, create, instances, request: () => request() });
    streamingCases(() => fx, started);
  });
}

// ---------------------------------------------------------------------------------------------
// Streaming both ways (issue 10). Every case is driven by events, never by timing: the function
// waits for a "gate" the test opens with a second request, and the test asks the function how
// much of a request body it has seen while it is still sending it.

/** The fixture's patterned bytes, block `i` of 64 KiB (the same formula as server.mjs's). */
export function patternBlock(i: number, size: number): Buffer {
  const b = Buffer.allocUnsafe(size);
  for (let k = 0; k < size; k++) b[k] = (k * 7 + i * 13) & 255;
  return b;
}

export const BLOCK = 65536;

/** Reads from `it` until `test` holds for what was read so far; returns all of it. */
async function readUntil(it: AsyncIterator<Buffer>, test: (text: string) => boolean): Promise<string> {
  let text = "";
  while (!test(text)) {
    const r = await it.next();
    if (r.done)
      throw new Error(`the body ended before the expected part arrived; got ${JSON.stringify(text)}`);
    text += r.value.toString();
  }
  return text;
}

function streamingCases(
  fixture: () => ConformanceFixture,
  started: (c: FunctionConfig) => Promise<Instance>,
): void {
  describe("streaming", () => {
    let gates = 0;
    const gate = () => `g${process.pid}-${++gates}`;
    const call = (method: string, path: string, query: string, body: Readable = bodyOf()): InvokeRequest => ({
      method,
      path,
      query,
      // A GET has no body; a POST's streams without a length (chunked).
      headers: method === "GET" ? { "content-length": "0" } : {},
      body,
    });
    const text = async (inst: Instance, path: string, query: string) =>
      (await bytesOf((await inst.invoke(call("GET", path, query))).body)).toString();
    const skip = () => fixture().streaming?.skip;

    it("delivers a response in parts: the first part is read while the function still waits", async (t) => {
      if (skip()) return t.skip(skip());
      const inst = await started(fixture().echo);
      const g = gate();
      const res = await inst.invoke(call("GET", "/stream/out", `gate=${g}`));
      const it = (res.body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
      const first = await readUntil(it, (s) => s.includes("event: 1"));
      assert.ok(!first.includes("event: 2"), "the second part came before the gate opened");
      assert.equal(inst.active, 1, "the invocation lasts while its body streams");
      assert.equal(await text(inst, "/stream/open", `gate=${g}`), "opened");
      const rest = await readUntil(it, (s) => s.includes("event: 2"));
      assert.ok(rest.includes("event: 2"));
      assert.equal((await it.next()).done, true);
      const end = await res.ended;
      assert.equal(end.error, undefined);
      assert.ok(end.ttfbMs < end.execMs, "the first byte came before the end");
      assert.equal(inst.active, 0);
    });

    it("delivers a request body in parts: the function sees the first part before the client finished", async (t) => {
      if (skip()) return t.skip(skip());
      const inst = await started(fixture().echo);
      const g = gate();
      const body = new PassThrough();
      const pending = inst.invoke(call("POST", "/stream/in", `gate=${g}`, body));
      body.write(Buffer.alloc(1000, 1));
      // Answered only once the function has received the first 1000 bytes; the body is still open.
      assert.equal(await text(inst, "/stream/seen", `gate=${g}&bytes=1000`), "1000");
      assert.equal(body.writableEnded, false);
      body.end(Buffer.alloc(500, 2));
      const res = await pending;
      const got = JSON.parse((await bytesOf(res.body)).toString()) as { bytes: number };
      assert.equal(got.bytes, 1500);
    });

    it("cancels the call when its reader goes away mid-stream, and the instance serves on", async (t) => {
      if (skip()) return t.skip(skip());
      const inst = await started(fixture().echo);
      const g = gate();
      const res = await inst.invoke(call("GET", "/stream/out", `gate=${g}`));
      const it = (res.body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
      await readUntil(it, (s) => s.includes("event: 1"));
      res.body.destroy();
      const end = await res.ended;
      assert.equal(end.error?.code, "CLIENT_GONE");
      assert.equal(inst.active, 0);
      // The function itself saw its response closed before the end.
      assert.equal(await text(inst, "/stream/closed", `gate=${g}`), "closed");
      assert.equal(inst.state, "ready");
      const echo = await inst.invoke(request());
      assert.equal((await bytesOf(echo.body)).toString(), "hello conformance");
    });

    it("cancels the call when the caller's signal aborts, cutting the body with CLIENT_GONE", async (t) => {
      if (skip()) return t.skip(skip());
      const inst = await started(fixture().echo);
      const g = gate();
      const cancel = new AbortController();
      const res = await inst.invoke(call("GET", "/stream/out", `gate=${g}`), cancel.signal);
      const it = (res.body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
      await readUntil(it, (s) => s.includes("event: 1"));
      cancel.abort();
      await assert.rejects(
        readUntil(it, () => false),
        { code: "CLIENT_GONE" },
      );
      assert.equal((await res.ended).error?.code, "CLIENT_GONE");
      assert.equal(await text(inst, "/stream/closed", `gate=${g}`), "closed");
    });

    it("moves 64 MiB each way, hashed, without holding either body whole", async (t) => {
      if (skip()) return t.skip(skip());
      const inst = await started(fixture().echo);
      const size = 64 * 2 ** 20;
      const half = size / 2;
      const expected = createHash("sha256");
      for (let i = 0; i < size / BLOCK; i++) expected.update(patternBlock(i, BLOCK));
      const digest = expected.digest("hex");

      // Up: the second half is sent only once the function has received the first.
      const up = gate();
      let sendRest!: () => void;
      const restMayGo = new Promise<void>((r) => (sendRest = r));
      const upload = Readable.from(
        (async function* () {
          for (let i = 0; i < size / BLOCK; i++) {
            if (i * BLOCK === half) await restMayGo;
            yield patternBlock(i, BLOCK);
          }
        })(),
        { objectMode: false },
      );
      const pending = inst.invoke(call("POST", "/stream/in", `gate=${up}`, upload));
      assert.equal(Number(await text(inst, "/stream/seen", `gate=${up}&bytes=${half}`)) >= half, true);
      sendRest();
      const got = JSON.parse((await bytesOf((await pending).body)).toString()) as {
        bytes: number;
        sha256: string;
      };
      assert.deepEqual(got, { bytes: size, sha256: digest });

      // Down: the first half is read before the function may write the second.
      const down = gate();
      const res = await inst.invoke(call("GET", "/stream/bytes", `gate=${down}&n=${size}`));
      const hash = createHash("sha256");
      let read = 0;
      let opened = false;
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        hash.update(chunk);
        read += chunk.length;
        if (!opened && read >= half) {
          opened = true;
          assert.equal(await text(inst, "/stream/open", `gate=${down}`), "opened");
        }
      }
      assert.equal(read, size);
      assert.equal(hash.digest("hex"), digest);
    });
  });
}
