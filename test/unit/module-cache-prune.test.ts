import assert from "node:assert/strict";
import { copyFile, mkdir, readdir, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { ModuleCache } from "../../src/sandbox/drivers/wasm/module-cache.js";
import { EXAMPLES, tempDir } from "../helpers/paths.js";

describe("compiled-module cache pruning", () => {
  it("removes only its own unused entries, never other files in the cache directory", async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const cacheDir = join(dir, "cache");
      const module = join(dir, "m.wasm");
      await copyFile(join(EXAMPLES, "echo", "echo.wasm"), module);
      const cache = new ModuleCache(cacheDir);
      const used = await cache.forRevision(module, "r1", 16, "t");
      // Not the cache's: what an operator keeps in a configured cache directory, the VM snapshots
      // beside the modules, a link, and a name that only starts like an entry's.
      await writeFile(join(cacheDir, "notes.txt"), "mine");
      await mkdir(join(cacheDir, "vm-snapshots"));
      await symlink(join(dir, "m.wasm"), join(cacheDir, `${"b".repeat(64)}-16.wasm`));
      await writeFile(join(cacheDir, `${"c".repeat(64)}-16.wasm.bak`), "mine");
      // The cache's own entry of a module no function uses any more.
      await writeFile(join(cacheDir, `${"a".repeat(64)}-16.wasm`), "stale");
      assert.deepEqual(await cache.prune(), [`${"a".repeat(64)}-16.wasm`]);
      assert.deepEqual(
        (await readdir(cacheDir)).sort(),
        [
          `${"b".repeat(64)}-16.wasm`,
          `${"c".repeat(64)}-16.wasm.bak`,
          `${used.hash}-16.wasm`,
          "notes.txt",
          "vm-snapshots",
        ].sort(),
      );
    } finally {
      await cleanup();
    }
  });
});

describe("pre-initialised snapshots in the module cache", () => {
  it("keeps a used module's snapshot beside it and prunes an unused one with its module", async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const cacheDir = join(dir, "cache");
      const module = join(dir, "primes.wasm");
      await copyFile(join(EXAMPLES, "primes", "primes.wasm"), module);
      const cache = new ModuleCache(cacheDir);
      try {
        const compiled = await cache.forRevision(module, "r1", 16, "t");
        assert.ok(compiled.initializer);
        const snapshot = await cache.snapshot(compiled, "t", 30_000);
        assert.ok(snapshot && snapshot.data.byteLength > 0);
        // Compiled with its mutable globals exposed (instrument.ts): clang's stack pointer is kept.
        assert.deepEqual(Object.keys(snapshot.globals), ["fennec:global:0"]);
        assert.equal(await cache.snapshot(compiled, "t", 30_000), snapshot, "initialised once, then cached");
        await writeFile(join(cacheDir, `${"a".repeat(64)}-16.snapshot`), "stale");
        assert.deepEqual(await cache.prune(), [`${"a".repeat(64)}-16.snapshot`]);
        assert.deepEqual(
          (await readdir(cacheDir)).sort(),
          [`${compiled.hash}-16.snapshot`, `${compiled.hash}-16.wasm`].sort(),
        );
      } finally {
        await cache.close();
      }
    } finally {
      await cleanup();
    }
  });
});
