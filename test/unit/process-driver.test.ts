import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { ProcessDriver } from "../../src/sandbox/drivers/process/driver.js";
import { ReadinessHub } from "../../src/sandbox/readiness.js";
import { ensureRunRoot, runRoot, sweepStale } from "../../src/sandbox/run-dir.js";
import { recordGoneOwner } from "../helpers/owner-record.js";
import type { FunctionConfig } from "../../src/config/function-config.js";
import { testConfig } from "../helpers/config.js";
import { startInstance } from "../helpers/instance.js";
import { ROOT } from "../helpers/paths.js";
import { GENEROUS_MS, waitFor } from "../helpers/wait.js";
import { bodyOf } from "../helpers/body.js";

const fn = (mode: string, command?: string[]): FunctionConfig =>
  testConfig({
    id: { user: "default", name: mode },
    key: `default/${mode}`,
    dir: join(ROOT, "test", "fixtures", "process"),
    sandbox: {
      kind: "process",
      handler: undefined,
      command: command ?? [process.execPath, "server.mjs", mode],
      env: {},
      transport: "unix",
      memoryMiB: 64,
      isolate: false,
      pids: 512,
    },
  });

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe("process driver specialties", () => {
  const hub = new ReadinessHub();
  const driver = new ProcessDriver();
  let server: Server;
  let base = "";
  // A run root of this file's own: other Fennecs on the machine (tests running at the same time)
  // neither appear in what these tests count nor get swept by them.
  const sharedRunDir = process.env["FENNEC_RUN_DIR"];
  let runDir = "";
  before(async () => {
    runDir = await mkdtemp(join(tmpdir(), "fennec-run-"));
    process.env["FENNEC_RUN_DIR"] = runDir;
    server = createServer((req, res) => {
      hub.signal((req.url ?? "").replace("/ready/", ""));
      res.end("ok");
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/ready/`;
  });
  after(async () => {
    await new Promise((r) => server.close(r));
    if (sharedRunDir === undefined) delete process.env["FENNEC_RUN_DIR"];
    else process.env["FENNEC_RUN_DIR"] = sharedRunDir;
    await rm(runDir, { recursive: true, force: true });
  });

  const start = (config: FunctionConfig, startTimeoutMs = GENEROUS_MS) =>
    startInstance(driver, config, { hub, callbackBase: base, startTimeoutMs });

  it("reports a child that exits before it is ready as FN_CRASHED, with its output", async () => {
    await assert.rejects(start(fn("crash-at-start")), (err: { code: string; message: string }) => {
      assert.equal(err.code, "FN_CRASHED");
      assert.match(err.message, /exited with code 7.*missing configuration/s);
      return true;
    });
  });

  it("names a command that cannot be started", async () => {
    await assert.rejects(start(fn("x", ["/nonexistent/fennec-no-such-binary"])), {
      code: "SANDBOX_START_FAILED",
    });
  });

  it("kills a child that never calls back at the start deadline and removes its run directory", async () => {
    const before = new Set(await readdir(runRoot("process")).catch(() => []));
    await assert.rejects(start(fn("no-callback"), 400), { code: "FN_INIT_TIMEOUT" });
    const leftovers = async () =>
      (await readdir(runRoot("process")).catch(() => [])).filter((d) => !before.has(d));
    await waitFor("the run directory to be removed", async () => (await leftovers()).length === 0).catch(
      () => undefined,
    );
    assert.deepEqual(await leftovers(), []);
  });

  it("stops the whole process group and removes the run directory on close", async () => {
    const inst = await start(fn("echo"));
    const res = await inst.invoke({
      method: "GET",
      path: "/",
      query: "",
      headers: {},
      body: bodyOf(),
    });
    const pid = Number(res.headers.find(([k]) => k === "x-pid")?.[1]);
    assert.ok(alive(pid));
    const dir = join(runRoot("process"), inst.id);
    await stat(dir);
    await inst.close();
    assert.ok(!alive(pid), "child gone");
    await assert.rejects(stat(dir), "run directory removed");
  });

  it("sweeps what a crashed Fennec left: kills its children, removes their directories", async () => {
    // A stand-in for an orphan: a detached child whose Fennec has died.
    const orphan = spawn("sleep", ["300"], { detached: true, stdio: "ignore" });
    const exited = new Promise((r) => orphan.once("exit", r));
    const stale = join(await ensureRunRoot("process"), "stale-instance");
    await mkdir(stale);
    await recordGoneOwner(stale, orphan.pid);
    const report = await sweepStale("process");
    assert.ok(report.removed.includes(stale), JSON.stringify(report));
    await exited;
    assert.ok(!alive(orphan.pid!), "orphan killed");
    assert.ok(!existsSync(stale) && !existsSync(`${stale}.owner.json`), "directory and record removed");
  });
});
