import assert from "node:assert/strict";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { WasmDriver } from "../../src/sandbox/drivers/wasm/driver.js";
import { testConfig } from "../helpers/config.js";
import { errorCode, request } from "../helpers/http.js";
import { WASM_FIXTURES } from "../helpers/paths.js";
import { addWasmFunction, startTestServer, type TestServer } from "../helpers/server.js";
import { wagiModule } from "../helpers/wasm-writer.js";

const MIB = 2 ** 20;

async function upload(s: TestServer, path: string, module: Uint8Array) {
  return request(`${s.url}/f/${path}`, {
    method: "PUT",
    headers: { "content-type": "application/wasm" },
    body: module as Uint8Array<ArrayBuffer>,
  });
}

describe("wasm sandbox: real-size modules", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer();
  });
  after(() => s.close());

  it("uploads and runs a valid WASI program with a data section above 1 MiB", async () => {
    const module = wagiModule({ output: "Content-Type: text/plain\n\nbig one ok", fillerBytes: 1.5 * MIB });
    const up = await upload(s, "alice/big", module);
    assert.equal(up.status, 200, up.text);
    const res = await request(`${s.url}/f/alice/big`, { method: "POST" });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.text, "big one ok");
  });

  it("uploads and runs a 30 MiB module", async () => {
    const module = wagiModule({ output: "Content-Type: text/plain\n\nhuge one ok", fillerBytes: 30 * MIB });
    assert.ok(module.byteLength > 30 * MIB);
    const up = await upload(s, "alice/huge", module);
    assert.equal(up.status, 200, up.text);
    const res = await request(`${s.url}/f/alice/huge`, { method: "POST" });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.text, "huge one ok");
  });

  it("still refuses a large module that is not valid WebAssembly", async () => {
    const module = wagiModule({ output: "x", fillerBytes: 2 * MIB });
    const broken = Buffer.from(module.subarray(0, module.byteLength - 100));
    const up = await upload(s, "alice/broken", broken);
    assert.equal(up.status, 422, up.text);
    assert.equal(errorCode(up), "MODULE_INVALID");
  });
});

describe("wasm sandbox: memory charged to the node budget", () => {
  const wasmConfig = (concurrentRequests: number, memoryMiB: number) =>
    testConfig({
      concurrentRequests,
      sandbox: { kind: "wasm", module: join(WASM_FIXTURES, "reflect.wasm"), memoryMiB, env: {}, dirs: {} },
    });

  it("charges every concurrent copy's linear memory cap, its waiting copy and overhead", async () => {
    const driver = new WasmDriver({ spareExecutors: 0 });
    try {
      const wide = wasmConfig(8, 128);
      // Before the module is compiled its initial memory is unknown: the cap stands in for it.
      assert.ok(driver.memoryMiB(wide) >= 8 * (128 + 128), `${driver.memoryMiB(wide)}`);
      await driver.prepare(wide);
      const charged = driver.memoryMiB(wide);
      assert.ok(charged >= 8 * 128 + 8, `charged ${charged} MiB for 8 copies of 128 MiB`);
      assert.ok(charged < 8 * (128 + 128), "the known initial memory replaces the cap");
      assert.equal(driver.memoryMiB(wasmConfig(1, 128)) * 8, charged);
    } finally {
      await driver.close();
    }
  });

  it("the scheduler refuses an instance whose concurrent copies do not fit the budget", async () => {
    const s = await startTestServer({ memoryBudgetMiB: 1024 });
    try {
      await addWasmFunction(s.registry, "wide", "reflect.wasm", "concurrent-requests = 8", 128);
      await addWasmFunction(s.registry, "narrow", "reflect.wasm", "concurrent-requests = 1", 128);
      const wide = await request(`${s.url}/invoke/wide/`, { method: "POST", body: "x" });
      assert.equal(wide.status, 503, wide.text);
      assert.equal(errorCode(wide), "NO_CAPACITY");
      const narrow = await request(`${s.url}/invoke/narrow/`, { method: "POST", body: "x" });
      assert.equal(narrow.status, 200, narrow.text);
    } finally {
      await s.close();
    }
  });
});

describe("wasm sandbox: one function's runaway calls do not starve the others", () => {
  // More runaway calls than the executor pool's most threads (4 per core, at least 4).
  const RUNAWAYS = Math.max(4, availableParallelism() * 4) + 4;
  let s: TestServer;
  before(async () => {
    // A start that waits for an executor longer than this fails: on the old executor pool the
    // healthy function's start waited for the runaways' 30 s timeout.
    s = await startTestServer({ startTimeoutMs: 10_000 });
    await addWasmFunction(
      s.registry,
      "runaway",
      "loop.wasm",
      `timeout = 30\nmax-instances = ${RUNAWAYS}`,
      16,
    );
    await addWasmFunction(s.registry, "healthy", "reflect.wasm", "", 16);
  });
  after(() => s.close());

  it("serves another function while runaway calls hold more executors than there are", async () => {
    const runaways = Array.from({ length: RUNAWAYS }, () =>
      request(`${s.url}/invoke/runaway/`, { method: "POST" }),
    );
    let runawaysDone = false;
    // allSettled: a call that fails is reported by the assertions below, not as an unhandled rejection.
    void Promise.allSettled(runaways).then(() => (runawaysDone = true));
    // Wait until every runaway call is running in its instance (a generous deadline).
    for (let tries = 0; ; tries++) {
      const stats = (await request(`${s.url}/stats`)).json<{
        instances: Record<string, { busy: number }>;
      }>();
      if ((stats.instances["default/runaway"]?.busy ?? 0) >= RUNAWAYS) break;
      assert.ok(tries < 600, "the runaway calls never all started");
      await new Promise((r) => setTimeout(r, 50));
    }
    for (let i = 0; i < 3; i++) {
      const res = await request(`${s.url}/invoke/healthy/`, { method: "POST", body: `call ${i}` });
      assert.equal(res.status, 200, res.text);
      assert.equal(res.text, `call ${i}`);
    }
    assert.equal(runawaysDone, false, "the healthy calls were served while the runaways still ran");
    const list = (await request(`${s.url}/system/functions`)).json<
      Array<{ key: string; state: string; error: unknown }>
    >();
    const healthy = list.find((f) => f.key === "default/healthy");
    assert.equal(healthy?.state, "ready", JSON.stringify(healthy?.error));
    // Each runaway call ends with its own timeout, charged to the function that ran away.
    for (const res of await Promise.all(runaways)) assert.equal(errorCode(res), "FN_TIMEOUT");
  });
});
