import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { FunctionConfig } from "../../src/config/function-config.js";
import { OciDriver } from "../../src/sandbox/drivers/oci/driver.js";
import { runRoot } from "../../src/sandbox/run-dir.js";
import { recordGoneOwner } from "../helpers/owner-record.js";
import { ociFixtureConfig } from "../helpers/config.js";
import { emptyGet, loopbackTarget, startInstance } from "../helpers/instance.js";
import { ROOT } from "../helpers/paths.js";
import { bytesOf } from "../helpers/body.js";

// Needs root, runc and runsc (.ci/run installs them); under CI=true a missing tool fails.
const fn = (mode: string, runtime: "runc" | "runsc", memoryMiB = 256, pids = 1024): FunctionConfig =>
  ociFixtureConfig(mode, runtime, { memoryMiB, pids, timeoutMs: 20_000 });

for (const runtime of ["runc", "runsc"] as const) {
  describe(`oci driver specialties (${runtime})`, () => {
    const driver = new OciDriver();
    let target: Awaited<ReturnType<typeof loopbackTarget>>;
    before(async () => {
      target = await loopbackTarget();
    });
    after(async () => {
      await target.close();
      await driver.close();
    });

    const start = (config: FunctionConfig) => startInstance(driver, config, { startTimeoutMs: 60_000 });

    it("has a read-only root but for /tmp, and no network", async () => {
      const inst = await start(fn("probe", runtime));
      try {
        const result = JSON.parse(
          (await bytesOf((await inst.invoke(emptyGet(`port=${target.port}`))).body)).toString(),
        ) as Record<string, string>;
        assert.equal(result["/tmp/written.txt"], "written");
        // Read-only, and not the unprivileged user's to write either (gVisor checks that first).
        for (const path of ["/fn/written.txt", "/usr/written.txt"])
          assert.ok(["EROFS", "EACCES"].includes(result[path]!), `${path}: ${result[path]}`);
        assert.notEqual(result["network"], "connected");
        assert.ok(!existsSync(join(ROOT, "test", "fixtures", "process", "written.txt")));
      } finally {
        await inst.destroy();
      }
    });

    it("reports exceeding the memory limit as FN_OOM", async () => {
      // gVisor's own Sentry and gofer count against the limit, so it needs more room to start.
      const inst = await start(fn("alloc", runtime, runtime === "runsc" ? 160 : 96));
      await assert.rejects(inst.invoke(emptyGet()), { code: "FN_OOM" });
      await inst.destroy();
    });

    it("contains a fork bomb at the pids limit", async () => {
      // runsc's limit covers the Sentry's own threads too, so its floor is higher; when the limit
      // is hit, gVisor's Sentry itself fails and the whole sandbox ends (FN_CRASHED), which still
      // contains the bomb. runc's function simply cannot start more processes.
      const limit = runtime === "runsc" ? 600 : 40;
      const inst = await start(fn("fork", runtime, 256, limit));
      try {
        const outcome = await inst.invoke(emptyGet()).then(
          async (r) => Number((await bytesOf(r.body)).toString()),
          (err: { code?: string }) => err.code,
        );
        if (runtime === "runc")
          assert.ok(typeof outcome === "number" && outcome < 40, `started ${outcome} under pids.limit 40`);
        else
          assert.ok(
            outcome === "FN_CRASHED" || (typeof outcome === "number" && outcome < 200),
            String(outcome),
          );
      } finally {
        await inst.destroy();
      }
    });

    it("removes the container and its bundle when stopped; a restart finds leftovers and removes them", async () => {
      const inst = await start(fn("echo", runtime));
      const state = OciDriver.stateRoot(runtime);
      const list = () =>
        execFileSync(runtime, ["--root", state, "list", "--quiet"], { encoding: "utf8" })
          .split("\n")
          .filter(Boolean);
      assert.ok(list().includes(inst.id));
      // A live Fennec's container is kept (several may share the state root)...
      await new OciDriver().cleanupStale();
      assert.ok(list().includes(inst.id), "a live Fennec's container is kept");
      // ...one whose Fennec is gone (its owner record names a process that has exited) is deleted.
      await recordGoneOwner(join(runRoot("oci"), inst.id));
      await new OciDriver().cleanupStale();
      assert.ok(!list().includes(inst.id), "leftover container deleted");
      await inst.destroy();
      assert.ok(!existsSync(join(runRoot("oci"), inst.id)), "bundle and run directory removed");
    });
  });
}
