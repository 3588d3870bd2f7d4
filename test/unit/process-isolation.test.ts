import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { createServer, type Server } from "node:net";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { FunctionConfig } from "../../src/config/function-config.js";
import { ProcessDriver } from "../../src/sandbox/drivers/process/driver.js";
import { Instance } from "../../src/sandbox/instance.js";
import { ReadinessHub } from "../../src/sandbox/readiness.js";
import { Cgroup } from "../../src/sandbox/cgroups.js";
import { testConfig } from "../helpers/config.js";
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

const get = (path = "/") => ({
  method: "GET",
  path,
  query: path.split("?")[1] ?? "",
  headers: {},
  body: new Uint8Array(0),
});

describe("process driver, isolated (bubblewrap + cgroups)", () => {
  const driver = new ProcessDriver();
  const hub = new ReadinessHub();
  let listener: Server;
  let port = 0;
  before(async () => {
    listener = createServer((s) => s.destroy());
    await new Promise<void>((r) => listener.listen(0, "127.0.0.1", () => r()));
    port = (listener.address() as AddressInfo).port;
  });
  after(async () => {
    await new Promise((r) => listener.close(r));
    await driver.close();
  });

  const start = async (config: FunctionConfig) => {
    const inst = new Instance({
      id: `iso-${Math.random().toString(36).slice(2)}`,
      driver,
      config,
      origin: "cold",
      hub,
      callbackBase: "unused",
      startTimeoutMs: 10_000,
    });
    await inst.start();
    return inst;
  };

  it("has a read-only filesystem but for /tmp, and no network", async () => {
    const inst = await start(fn("probe"));
    try {
      const res = await inst.invoke({ ...get(), query: `port=${port}` });
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
    await assert.rejects(inst.invoke(get()), { code: "FN_OOM" });
    await inst.destroy();
  });

  it("stops a fork bomb at the pids limit", async () => {
    const inst = await start(fn("fork", 256, 40));
    try {
      const started = Number(Buffer.from((await inst.invoke(get())).body).toString());
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
