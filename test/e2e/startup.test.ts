import assert from "node:assert/strict";
import { mkdir, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { startFennec } from "../../src/main.js";
import { request } from "../helpers/http.js";
import { copyExamples, tempDir } from "../helpers/paths.js";
import { waitFor } from "../helpers/wait.js";

describe("start-up after a crash", () => {
  it("removes what a crashed run left in the registry and the module cache, and serves", async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const registry = await copyExamples(dir);
      const cache = join(dir, "cache");
      // Debris of a crash: a half-written upload, a half-deleted function, a stale cache entry.
      await writeFile(join(registry, "echo", ".fennec-tmp-echo.wasm-0a1b2c"), "half");
      await mkdir(join(registry, ".fennec-trash-deadbeef", "old"), { recursive: true });
      await mkdir(cache, { recursive: true });
      await writeFile(join(cache, `${"0".repeat(64)}-16.wasm`), "stale");
      const fennec = await startFennec({ registry, port: 0, logLevel: "silent", cacheDir: cache });
      try {
        assert.equal(
          (await request(`${fennec.url}/invoke/echo/`, { method: "POST", body: "up" })).text,
          "up",
        );
        // The thesis' exec time is the whole call: a cold call includes its wait for the instance.
        const stats = (await request(`${fennec.url}/stats`)).json<Record<string, number>>();
        assert.equal(stats["NumbInitVms"], 1);
        assert.ok(stats["FuncExecTimeNanoMax"]! >= stats["VmInitTimeNanoMax"]!, JSON.stringify(stats));
        assert.deepEqual(
          (await readdir(join(registry, "echo"))).filter((n) => n.startsWith(".fennec")),
          [],
        );
        assert.deepEqual(
          (await readdir(registry)).filter((n) => n.startsWith(".fennec-trash")),
          [],
        );
        // Pruning runs once every function is prepared (handlers and roots of the other examples
        // too), in the background: on a busy machine that takes a while, so the deadline is generous.
        let cached: string[] = [];
        await waitFor(
          "the stale cache entry to be pruned and the example modules cached",
          async () => {
            cached = await readdir(cache);
            return !cached.includes(`${"0".repeat(64)}-16.wasm`) && cached.length >= 3;
          },
          { timeoutMs: 180_000, intervalMs: 50 },
        ).catch(() => undefined);
        assert.ok(!cached.includes(`${"0".repeat(64)}-16.wasm`), "stale cache entry removed");
        assert.ok(cached.length >= 3, `the example modules are cached on disk: ${cached.join(", ")}`);
      } finally {
        await fennec.close();
      }
    } finally {
      await cleanup();
    }
  });
});
