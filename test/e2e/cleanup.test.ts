import assert from "node:assert/strict";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { chmod, cp, mkdir, readdir, readFile, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { startFennec, type Fennec } from "../../src/main.js";
import { Cgroup } from "../../src/sandbox/cgroups.js";
import { OciDriver } from "../../src/sandbox/drivers/oci/driver.js";
import { ProcessDriver } from "../../src/sandbox/drivers/process/driver.js";
import { startTime } from "../../src/core/process-identity.js";
import { request } from "../helpers/http.js";
import { CLI, ROOT, tempDir } from "../helpers/paths.js";

// Two Fennecs share one run root (FENNEC_RUN_DIR), each with live out-of-process instances: a plain
// process, an isolated one (bubblewrap + cgroups) and a runc container. A foreign directory, a
// symbolic link out of the run root and a directory that merely looks like a run directory sit
// among them. One Fennec is killed with SIGKILL; the next start must clean up exactly its debris.
// Needs root, bwrap and runc (.ci/run installs them); under CI=true a missing tool fails.

const SERVER = join(ROOT, "test", "fixtures", "process", "server.mjs");
const FUNCTIONS = {
  plain: `[process]\ncommand = [${JSON.stringify(process.execPath)}, "server.mjs", "echo"]\n`,
  isolated: `[process]\ncommand = [${JSON.stringify(process.execPath)}, "server.mjs", "echo"]\nisolate = true\n`,
  runc: `[oci]\ncommand = [${JSON.stringify(process.execPath)}, "server.mjs", "echo"]\nruntime = "runc"\n`,
} as const;
type Name = keyof typeof FUNCTIONS;

/** A `fennec serve` process on its own registry and a free port. */
interface Served {
  readonly child: ChildProcess;
  readonly url: string;
  readonly exited: Promise<unknown>;
}

async function registry(dir: string): Promise<string> {
  for (const [name, table] of Object.entries(FUNCTIONS)) {
    await mkdir(join(dir, name), { recursive: true });
    await cp(SERVER, join(dir, name, "server.mjs"));
    await writeFile(join(dir, name, "function.toml"), `keepalive = 600\nconcurrent-requests = 4\n${table}`);
  }
  return dir;
}

async function serve(reg: string, runBase: string): Promise<Served> {
  const child = spawn(process.execPath, [CLI, "serve", "-r", reg, "-p", "0", "--process"], {
    env: { ...process.env, FENNEC_RUN_DIR: runBase },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const exited = new Promise((r) => child.once("exit", r));
  let log = "";
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr.on("data", (chunk: Buffer) => {
      log += chunk.toString();
      const m = / on (http:\/\/127\.0\.0\.1:\d+)/.exec(log);
      if (m) resolve(m[1]!);
    });
    child.once("exit", (code) => reject(new Error(`fennec serve exited (${code}) before serving:\n${log}`)));
  });
  child.stderr.resume();
  return { child, url, exited };
}

/** The PID each function's instance reports (host PID for plain, namespace PID otherwise). */
async function call(url: string, name: Name): Promise<{ pid: string; start: string | null }> {
  const res = await request(`${url}/invoke/${name}/`);
  assert.equal(res.status, 200, `${name}: ${res.text}`);
  return { pid: res.headers.get("x-pid")!, start: res.headers.get("x-fennec-start") };
}

interface Record {
  instanceId: string;
  fennec: { pid: number; start: string };
  child?: { pid: number; start: string };
}

/** The owner records of one Fennec's instances of a driver, by instance id. */
async function recordsOf(runBase: string, driver: string, fennecPid: number): Promise<Record[]> {
  const root = join(runBase, driver);
  const records: Record[] = [];
  for (const name of await readdir(root)) {
    if (!name.endsWith(".owner.json") || name.startsWith(".")) continue;
    const r = JSON.parse(await readFile(join(root, name), "utf8")) as Record;
    if (r.fennec.pid === fennecPid) records.push(r);
  }
  return records;
}

function runcIds(runBase: string): string[] {
  const out = execFileSync("runc", ["--root", join(runBase, "oci-state", "runc"), "list", "--quiet"], {
    encoding: "utf8",
  });
  return out.split("\n").filter(Boolean);
}

/** Host PIDs in an isolated instance's cgroup (every hierarchy lists the same processes). */
function groupProcs(instanceId: string): number[] {
  const dir = Cgroup.dirsFor(instanceId)[0]!;
  return readFileSync(join(dir, "cgroup.procs"), "utf8").split("\n").filter(Boolean).map(Number);
}

async function waitUntil(what: string, ok: () => Promise<boolean> | boolean, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("start-up cleanup with two Fennecs on one run root", () => {
  let work: { dir: string; cleanup: () => Promise<void> };
  let runBase: string;
  let a: Served | undefined;
  let b: Served | undefined;
  let other: Served | undefined;
  let c: Fennec | undefined;
  const savedRunDir = process.env["FENNEC_RUN_DIR"];
  /** Processes of the killed Fennec, ended in teardown if the test failed before cleanup did. */
  const orphans: Array<{ pid: number; start: string }> = [];

  before(async () => {
    work = await tempDir("fennec-cleanup-");
    // Isolated instances run as nobody, which must be able to search down to its function directory.
    await chmod(work.dir, 0o755);
    runBase = join(work.dir, "run");
  });

  after(async () => {
    await c?.close();
    for (const s of [a, b, other]) {
      if (s && s.child.exitCode === null && s.child.signalCode === null) {
        s.child.kill("SIGTERM");
        await s.exited;
      }
    }
    for (const o of orphans) {
      if ((await startTime(o.pid)) === o.start) process.kill(o.pid, "SIGKILL");
    }
    for (const id of existsSync(join(runBase, "oci-state", "runc")) ? runcIds(runBase) : [])
      execFileSync("runc", ["--root", join(runBase, "oci-state", "runc"), "delete", "-f", id]);
    if (savedRunDir === undefined) delete process.env["FENNEC_RUN_DIR"];
    else process.env["FENNEC_RUN_DIR"] = savedRunDir;
    await work.cleanup();
  });

  it("removes only the killed Fennec's debris; the live one keeps serving, foreign files survive", async () => {
    const names = Object.keys(FUNCTIONS) as Name[];
    a = await serve(await registry(join(work.dir, "reg-a")), runBase);
    const aFirst = Object.fromEntries(
      await Promise.all(names.map(async (n) => [n, await call(a!.url, n)] as const)),
    );

    // What Fennec did not make, inside its run root: a foreign directory with a file, a symbolic
    // link to a directory outside with a file, and a directory named like an instance, no record.
    const outside = join(work.dir, "outside");
    await mkdir(outside);
    await writeFile(join(outside, "precious"), "keep");
    const foreign = [
      join(runBase, "foreign"),
      join(runBase, "process", "foreign"),
      join(runBase, "oci", "foreign"),
      join(runBase, "process", "00000000-0000-4000-8000-000000000000"),
    ];
    for (const dir of foreign) {
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, "file"), "not Fennec's");
    }
    await symlink(outside, join(runBase, "process", "link-out"));
    await symlink(outside, join(runBase, "oci", "link-out"));

    // A second Fennec starts (and sweeps) while the first serves; both then have live instances.
    b = await serve(await registry(join(work.dir, "reg-b")), runBase);
    const bFirst = Object.fromEntries(
      await Promise.all(names.map(async (n) => [n, await call(b!.url, n)] as const)),
    );
    for (const n of names) {
      const again = await call(a.url, n);
      assert.deepEqual(
        again,
        { pid: aFirst[n]!.pid, start: "warm" },
        `${n}: A's instance survived B's start`,
      );
    }

    // What A leaves when it is killed: its children, its isolated instance's cgroup, its container.
    const aPid = a.child.pid!;
    const aProcess = await recordsOf(runBase, "process", aPid);
    const aOci = await recordsOf(runBase, "oci", aPid);
    assert.equal(aProcess.length, 2, JSON.stringify(aProcess));
    assert.equal(aOci.length, 1, JSON.stringify(aOci));
    const aGroups = aProcess.map((r) => r.instanceId).filter((id) => existsSync(Cgroup.dirsFor(id)[0]!));
    assert.equal(aGroups.length, 1, "A's isolated instance has a cgroup");
    const aProcs: Array<{ pid: number; start: string }> = [];
    for (const r of [...aProcess, ...aOci]) if (r.child) aProcs.push(r.child);
    for (const pid of groupProcs(aGroups[0]!)) aProcs.push({ pid, start: (await startTime(pid))! });
    orphans.push(...aProcs);
    assert.ok(runcIds(runBase).includes(aOci[0]!.instanceId), "A's container runs");

    a.child.kill("SIGKILL");
    await a.exited;
    // The plain child and the container outlive A (bubblewrap dies with its parent; its group stays).
    const plainChild = aProcess.find((r) => !aGroups.includes(r.instanceId))!.child!;
    assert.equal(String(plainChild.pid), aFirst["plain"]!.pid);
    assert.equal(await startTime(plainChild.pid), plainChild.start, "A's plain child outlives it");
    assert.ok(runcIds(runBase).includes(aOci[0]!.instanceId), "A's container outlives it");

    // The next Fennec on this run root cleans up after A.
    process.env["FENNEC_RUN_DIR"] = runBase;
    c = await startFennec({
      registry: await registry(join(work.dir, "reg-c")),
      port: 0,
      logLevel: "silent",
      driverSettings: { process: true },
    });

    // A's children, its cgroup's processes and its container are ended; its debris is gone.
    await waitUntil("A's processes have been killed", async () => {
      for (const p of aProcs) if ((await startTime(p.pid)) === p.start) return false;
      return true;
    });
    assert.ok(!runcIds(runBase).includes(aOci[0]!.instanceId), "A's container deleted");
    for (const id of aGroups) for (const d of Cgroup.dirsFor(id)) assert.ok(!existsSync(d), `${d} removed`);
    for (const [driver, records] of [
      ["process", aProcess],
      ["oci", aOci],
    ] as const) {
      for (const r of records) {
        assert.ok(!existsSync(join(runBase, driver, r.instanceId)), "A's run directory removed");
        assert.ok(!existsSync(join(runBase, driver, `${r.instanceId}.owner.json`)), "A's record removed");
      }
    }

    // B's instances were not touched: the same ones answer, warm.
    for (const n of names) {
      const again = await call(b.url, n);
      assert.deepEqual(again, { pid: bFirst[n]!.pid, start: "warm" }, `${n}: B's instance survived`);
    }
    const bRecords = await recordsOf(runBase, "process", b.child.pid!);
    assert.equal(bRecords.length, 2);
    assert.ok((await recordsOf(runBase, "oci", b.child.pid!)).length === 1);

    // Nothing Fennec did not make was touched, and the symbolic links were not followed.
    for (const dir of foreign) assert.equal(await readFile(join(dir, "file"), "utf8"), "not Fennec's");
    assert.equal(await readFile(join(outside, "precious"), "utf8"), "keep");
    assert.equal(await readFile(join(runBase, "process", "link-out", "precious"), "utf8"), "keep");

    // ...and is reported as left alone, for the log.
    const report = await new ProcessDriver().cleanupStale();
    const leftAlone = report.leftAlone.map((l) => l.path);
    for (const path of [foreign[1], foreign[3], join(runBase, "process", "link-out")])
      assert.ok(leftAlone.includes(path!), `${path} reported: ${JSON.stringify(report)}`);
    assert.deepEqual(report.removed, []);
    const oci = await new OciDriver().cleanupStale();
    assert.ok(
      oci.leftAlone.some((l) => l.path === foreign[2]),
      JSON.stringify(oci),
    );
    assert.deepEqual(oci.removed, []);
  });

  it("sweeps a registry's debris only when no other live Fennec serves the same directory", async () => {
    const reg = join(work.dir, "reg-shared");
    await mkdir(join(reg, "plain"), { recursive: true });
    await cp(SERVER, join(reg, "plain", "server.mjs"));
    await writeFile(join(reg, "plain", "function.toml"), FUNCTIONS.plain);
    other = await serve(reg, runBase);
    // What a live Fennec's upload and delete look like half-way, and what a crashed one leaves.
    const temp = join(reg, "plain", ".fennec-tmp-server.mjs-0a1b2c");
    const trash = join(reg, ".fennec-trash-0a1b2c");
    await writeFile(temp, "half");
    await mkdir(join(trash, "old"), { recursive: true });
    process.env["FENNEC_RUN_DIR"] = runBase;
    const options = {
      registry: reg,
      port: 0,
      logLevel: "silent",
      driverSettings: { process: true },
    } as const;
    const second = await startFennec(options);
    await second.close();
    assert.ok(existsSync(temp) && existsSync(trash), "another live Fennec's files are kept");
    other.child.kill("SIGKILL");
    await other.exited;
    const third = await startFennec(options);
    await third.close();
    assert.ok(!existsSync(temp) && !existsSync(trash), "removed once no other Fennec serves the registry");
  });
});
