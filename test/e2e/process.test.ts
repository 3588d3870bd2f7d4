import assert from "node:assert/strict";
import { copyFile, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { startFennec } from "../../src/main.js";
import { errorCode, request } from "../helpers/http.js";
import { copyExamples, ROOT, tempDir } from "../helpers/paths.js";

describe("[process] functions through the gateway", () => {
  it("serves them when the process sandbox is enabled, and refuses them otherwise", async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const registry = await copyExamples(dir);
      const fn = join(registry, "proc");
      await mkdir(fn);
      await copyFile(join(ROOT, "test", "fixtures", "process", "server.mjs"), join(fn, "server.mjs"));
      await writeFile(
        join(fn, "function.toml"),
        `keepalive = 30\nconcurrent-requests = 4\n[process]\ncommand = [${JSON.stringify(process.execPath)}, "server.mjs", "echo"]\n`,
      );
      for (const enabled of [true, false]) {
        const fennec = await startFennec({
          registry,
          port: 0,
          logLevel: "silent",
          cacheDir: join(dir, "cache"),
          processSandbox: enabled,
        });
        try {
          const r = await request(`${fennec.url}/invoke/proc/some/path?q=1`, {
            method: "PUT",
            body: "to a process",
          });
          if (enabled) {
            assert.equal(r.status, 200, r.text);
            assert.equal(r.text, "to a process");
            assert.equal(r.headers.get("x-path"), "/some/path");
            assert.equal(r.headers.get("x-query"), "q=1");
            assert.equal(r.headers.get("x-method"), "PUT");
          } else {
            assert.equal(errorCode(r), "DRIVER_UNAVAILABLE");
          }
        } finally {
          await fennec.close();
        }
      }
    } finally {
      await cleanup();
    }
  });
});
