import assert from "node:assert/strict";
import { copyFile, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { ModuleCache, validateModuleBytes } from "../../src/sandbox/drivers/wasm/module-cache.js";
import { EXAMPLES, tempDir, WASM_FIXTURES } from "../helpers/paths.js";
import { wagiModule } from "../helpers/wasm-writer.js";

describe("compiled-module cache", () => {
  it("compiles once per content and limit, keeps the checked bytes on disk, and drops replaced revisions", async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const module = join(dir, "m.wasm");
      await copyFile(join(EXAMPLES, "echo", "echo.wasm"), module);
      const cache = new ModuleCache(join(dir, "cache"));
      const a = await cache.forRevision(module, "r1", 16, "t");
      assert.equal(await cache.forRevision(module, "r1", 16, "t"), a, "same revision: same compiled module");
      assert.deepEqual(await readdir(join(dir, "cache")), [`${a.hash}-16.wasm`]);
      await copyFile(join(EXAMPLES, "hello", "hello.wasm"), module);
      const b = await cache.forRevision(module, "r2", 16, "t");
      assert.notEqual(b.hash, a.hash);
      // Pruning keeps only what is loaded now: the replaced module's disk entry goes.
      await new Promise((r) => setTimeout(r, 10));
      await cache.prune();
      assert.deepEqual(await readdir(join(dir, "cache")), [`${b.hash}-16.wasm`]);
      // A restart (new cache object) reads the checked bytes from disk.
      const again = await new ModuleCache(join(dir, "cache")).forRevision(module, "r2", 16, "t");
      assert.equal(again.hash, b.hash);
    } finally {
      await cleanup();
    }
  });

  it("refuses what the sandbox cannot run, with FN_BAD_MODULE", async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const cache = new ModuleCache(undefined);
      await assert.rejects(cache.forRevision(join(WASM_FIXTURES, "not-wasm.wasm"), "r", 16, "t"), {
        code: "FN_BAD_MODULE",
      });
      await assert.rejects(
        cache.forRevision(join(WASM_FIXTURES, "forbidden-import.wasm"), "r", 16, "t"),
        /env\.open_socket/,
      );
      await writeFile(join(dir, "empty.wasm"), "");
      await assert.rejects(cache.forRevision(join(dir, "empty.wasm"), "r", 16, "t"), {
        code: "FN_BAD_MODULE",
      });
      await assert.rejects(
        cache.forRevision(join(dir, "absent.wasm"), "r", 16, "t"),
        /cannot read its module \(ENOENT\)/,
      );
    } finally {
      await cleanup();
    }
  });
});

describe("upload-time module check", () => {
  it("checks a module of several MiB on its own thread and leaves the caller's bytes intact", async () => {
    const module = Buffer.from(wagiModule({ output: "x", fillerBytes: 5 * 2 ** 20 }));
    // A view into a larger buffer, as bodies read from a socket are.
    const view = Buffer.concat([Buffer.from("junk"), module]).subarray(4);
    await validateModuleBytes(view, 64, "t");
    assert.equal(view.byteLength, module.byteLength);
    assert.ok(view.equals(module), "the bytes are unchanged and still readable");
    await assert.rejects(validateModuleBytes(view.subarray(0, view.byteLength - 10), 64, "t"), {
      code: "FN_BAD_MODULE",
    });
    await assert.rejects(validateModuleBytes(view, 1, "t"), /initial memory/);
  });
});
