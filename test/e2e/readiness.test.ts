import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { startFennec } from "../../src/main.js";
import { FakeDriver } from "../../src/sandbox/drivers/fake/driver.js";
import { errorCode, request } from "../helpers/http.js";
import { copyExamples, tempDir } from "../helpers/paths.js";

// Out-of-process sandboxes announce readiness by calling the gateway's /ready/<instance-id>, the
// UniFaaS %callback. The in-memory driver does exactly that over real HTTP here, so the whole
// path (callback URL, route, hub, start deadline) is exercised without any real sandbox.
describe("readiness callback through the gateway", () => {
  it("starts an instance once it calls back, and fails one that never does with FN_INIT_TIMEOUT", async () => {
    const { dir, cleanup } = await tempDir();
    const driver = new FakeDriver();
    driver.behaviour.useCallback = true;
    const registry = await copyExamples(dir);
    await mkdir(join(registry, "guest"));
    await writeFile(
      join(registry, "guest", "function.toml"),
      'keepalive = 30\nconcurrent-requests = 1\n[container]\nimage = "fake"\n',
    );
    const fennec = await startFennec({
      registry,
      port: 0,
      logLevel: "silent",
      cacheDir: join(dir, "cache"),
      // Long enough for a start that calls back on a busy machine; the hanging start below waits it out.
      startTimeoutMs: 10_000,
      drivers: new Map([["container", driver]]),
    });
    try {
      const r = await request(`${fennec.url}/invoke/guest/`, { method: "POST", body: "called back" });
      assert.equal(r.status, 200, r.text);
      assert.equal(r.text, "called back");
      assert.equal(r.headers.get("x-fennec-start"), "cold");

      driver.behaviour.useCallback = false;
      driver.behaviour.hangOnStart = true;
      const scale = await request(`${fennec.url}/preBoot/guest`, {
        method: "POST",
        body: "1",
        headers: { "content-type": "application/json" },
      });
      assert.equal(scale.json<{ errors: Array<{ code: string }> }>().errors[0]?.code, "FN_INIT_TIMEOUT");
      // The instance that did call back keeps serving.
      assert.equal((await request(`${fennec.url}/invoke/guest/`, { method: "POST", body: "x" })).text, "x");
      // A function whose sandbox kind has no driver on this node says so ([process] is opt-in).
      await mkdir(join(registry, "procfn"));
      await writeFile(
        join(registry, "procfn", "function.toml"),
        'keepalive = 1\nconcurrent-requests = 1\n[process]\ncommand = ["true"]\n',
      );
      const off = await request(`${fennec.url}/invoke/procfn/`);
      assert.equal(off.status, 409);
      assert.equal(errorCode(off), "DRIVER_UNAVAILABLE");
    } finally {
      await fennec.close();
      await cleanup();
    }
  });
});
