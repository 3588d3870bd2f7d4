import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { FunctionConfig } from "../../src/config/function-config.js";
import { ProcessDriver } from "../../src/sandbox/drivers/process/driver.js";
import { Cgroup } from "../../src/sandbox/cgroups.js";
import { testConfig } from "../helpers/config.js";
import { emptyGet, loopbackTarget, startInstance } from "../helpers/instance.js";
import { ROOT } from "../helpers/paths.js";

// Needs root and bubblewrap (.ci/run installs it); under CI=true a missing tool fails, never skips.
const fn = (mode: string, memoryMiB = 256, pids = 512): FunctionConfig =>
  testConfig({
    id: { user: "default", name: mode },
    key: `default/${mode}`,
    dir: join(ROOT, "test", "fixtures", "process"),
    timeoutMs: 10_000,
    sandbox: {
      kind: "process",
      handler: undefined,
      command: [process.execPath, "server.mjs", mode],
      env: {},
      transport: "unix",
      memoryMiB,
      isolate: true,
      pids,
    },
  });

describe("process driver, isolated (bubblewrap + cgroups)", () => {
  const driver = new ProcessDriver();
  let target: Awaited<ReturnType<typeof loopbackTarget>>;
  before(async () => {
    target = await loopbackTarget();
  });
  after(async () => {
    await target.close();
    await driver.close();
  });

  const start = (config: FunctionConfig) => startInstance(driver, config);

  it("has a read-only filesystem but for /tmp, and no network", async () => {
    const inst = await start(fn("probe"));
    try {
      const res = await inst.invoke(emptyGet(`port=${target.port}`));
      const result = JSON.parse(Buffer.from(res.body).toString()) as Record<string, string>;
      assert.equal(result["/tmp/written.txt"], "written");
      assert.equal(result["/fn/written.txt"], "EROFS");
      assert.equal(result["/usr/written.txt"], "EROFS");
      assert.notEqual(result["network"], "connected", "the host's loopback is unreachable");
      assert.ok(!existsSync(join(ROOT, "test", "fixtures", "process", "written.txt")));
    } finally {
      await inst.destroy();
    }
  });

  it("reports exceeding the memory limit as FN_OOM", async () => {
    const inst = await start(fn("alloc", 96));
    await assert.rejects(inst.invoke(emptyGet()), { code: "FN_OOM" });
    await inst.destroy();
  });

  it("stops a fork bomb at the pids limit", async () => {
    const inst = await start(fn("fork", 256, 40));
    try {
      const started = Number(Buffer.from((await inst.invoke(emptyGet())).body).toString());
      assert.ok(started > 0 && started < 40, `started ${started} processes under a limit of 40`);
    } finally {
      await inst.destroy();
    }
  });

  it("removes its cgroups when the instance stops", async () => {
    const inst = await start(fn("echo"));
    const dirs = Cgroup.dirsFor(inst.id);
    assert.ok(
      dirs.length > 0 && dirs.every((d) => existsSync(d)),
      "the instance has its cgroups while it runs",
    );
    await inst.close();
    for (const d of dirs) assert.ok(!existsSync(d), `${d} removed`);
  });
});
