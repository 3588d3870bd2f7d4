import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, chown, mkdir, readFile, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, afterEach, before, beforeEach, describe, it } from "node:test";
import { startTime } from "../../src/core/process-identity.js";
import { createRunDir, ensureRunRoot, ownerOf, removeRunDir, sweepStale } from "../../src/sandbox/run-dir.js";
import { goneProcess, recordGoneOwner } from "../helpers/owner-record.js";
import { tempDir } from "../helpers/paths.js";

// Needs root (chown to another user, a bind mount); CI runs as root.
describe("run directories: what Fennec may use and remove", () => {
  let work: { dir: string; cleanup: () => Promise<void> };
  let base: string;
  const saved = process.env["FENNEC_RUN_DIR"];
  let n = 0;

  before(async () => {
    work = await tempDir("fennec-run-dir-");
  });
  beforeEach(() => {
    base = join(work.dir, `base-${n++}`);
    process.env["FENNEC_RUN_DIR"] = base;
  });
  afterEach(() => {
    if (saved === undefined) delete process.env["FENNEC_RUN_DIR"];
    else process.env["FENNEC_RUN_DIR"] = saved;
  });
  after(() => work.cleanup());

  it("creates the run root mode 0700 and tightens a readable one of its own", async () => {
    const root = await ensureRunRoot("process");
    assert.equal((await stat(base)).mode & 0o777, 0o700);
    assert.equal((await stat(root)).mode & 0o777, 0o700);
    await chmod(base, 0o755);
    await ensureRunRoot("process");
    // Closed to reading and listing; search stays (isolated instances walk to their socket directory).
    assert.equal((await stat(base)).mode & 0o777, 0o711);
    await chmod(base, 0o700);
    await ensureRunRoot("process");
    assert.equal((await stat(base)).mode & 0o777, 0o700);
  });

  it("refuses a run root another user made, one writable by others, and a symbolic link", async () => {
    const elsewhere = join(work.dir, `elsewhere-${n}`);
    await mkdir(elsewhere, { mode: 0o700 });
    await symlink(elsewhere, base);
    await assert.rejects(createRunDir("process", "i1"), {
      code: "SANDBOX_START_FAILED",
      message: /symbolic link.*FENNEC_RUN_DIR/s,
    });
    assert.ok(!existsSync(join(elsewhere, "process")), "nothing created through the link");

    process.env["FENNEC_RUN_DIR"] = base = join(work.dir, `base-${n++}`);
    await mkdir(base, { mode: 0o700 });
    await chown(base, 65534, 65534); // what another user pre-creating /tmp/fennec-<uid> leaves
    await assert.rejects(createRunDir("process", "i1"), { message: /owned by uid 65534/ });

    process.env["FENNEC_RUN_DIR"] = base = join(work.dir, `base-${n++}`);
    await mkdir(base);
    await chmod(base, 0o777);
    await assert.rejects(createRunDir("process", "i1"), { message: /writable by others/ });
    assert.ok(!existsSync(join(base, "process")));
    // A sweep of such a root touches nothing and says why.
    const report = await sweepStale("process");
    assert.deepEqual(report.removed, []);
    assert.match(report.leftAlone[0]!.reason, /writable by others/);
  });

  it("never follows a symbolic link in place of a driver's root", async () => {
    const outside = join(work.dir, `outside-${n}`);
    await mkdir(outside);
    const decoy = join(outside, "victim");
    await mkdir(decoy);
    await writeFile(join(decoy, "file"), "keep");
    await recordGoneOwner(decoy); // looks exactly like a gone Fennec's debris
    await mkdir(base, { mode: 0o700 });
    await symlink(outside, join(base, "process"));
    const report = await sweepStale("process");
    assert.deepEqual(report.removed, []);
    assert.match(report.leftAlone[0]!.reason, /symbolic link/);
    assert.equal(await readFile(join(decoy, "file"), "utf8"), "keep");
  });

  it("removes a gone Fennec's directory without following a symbolic link inside it", async () => {
    const outside = join(work.dir, `outside-${n}`);
    await mkdir(outside);
    await writeFile(join(outside, "precious"), "keep");
    const dir = join(await ensureRunRoot("process"), "gone-1");
    await mkdir(join(dir, "sub"), { recursive: true });
    await symlink(outside, join(dir, "sub", "link"));
    await symlink(join(outside, "precious"), join(dir, "file-link"));
    await recordGoneOwner(dir);
    const report = await sweepStale("process");
    assert.deepEqual(report.removed, [dir]);
    assert.ok(!existsSync(dir) && !existsSync(`${dir}.owner.json`));
    assert.equal(await readFile(join(outside, "precious"), "utf8"), "keep");
  });

  it("leaves a gone Fennec's directory alone while something is mounted in it", async () => {
    const mounted = join(work.dir, `mounted-${n}`);
    await mkdir(mounted);
    await writeFile(join(mounted, "file"), "keep");
    const dir = join(await ensureRunRoot("process"), "gone-2");
    await mkdir(join(dir, "m"), { recursive: true });
    await recordGoneOwner(dir);
    execFileSync("mount", ["--bind", mounted, join(dir, "m")]);
    try {
      const report = await sweepStale("process");
      assert.deepEqual(report.removed, []);
      assert.match(report.leftAlone.find((l) => l.path === dir)!.reason, /mounted/);
      assert.equal(await readFile(join(dir, "m", "file"), "utf8"), "keep");
      assert.ok(existsSync(`${dir}.owner.json`), "the record stays for the next start");
    } finally {
      execFileSync("umount", [join(dir, "m")]);
    }
    assert.deepEqual((await sweepStale("process")).removed, [dir], "removed once unmounted");
  });

  it("tells a live owner from a recycled PID, and kills only the very child it recorded", async () => {
    const root = await ensureRunRoot("process");
    // A process that still runs, recorded as owner: live. The same PID with another start time
    // (what a recycled PID looks like): gone.
    const sleeper = spawn("sleep", ["300"], { stdio: "ignore" });
    const exited = new Promise((r) => sleeper.once("exit", r));
    try {
      const start = (await startTime(sleeper.pid!))!;
      const write = async (id: string, fennec: { pid: number; start: string }, child?: object) => {
        await mkdir(join(root, id));
        const record = { kind: "fennec-run-dir/1", instanceId: id, fennec, child };
        await writeFile(join(root, `${id}.owner.json`), JSON.stringify(record));
      };
      await write("live", { pid: sleeper.pid!, start });
      await write("recycled", { pid: sleeper.pid!, start: String(Number(start) - 1) });
      // A gone Fennec whose recorded child PID now runs another process (other start time).
      await write("other-child", await goneProcess(), { pid: sleeper.pid!, start: "1", cmdline: "" });
      assert.equal(await ownerOf("process", "live"), "live");
      assert.equal(await ownerOf("process", "recycled"), "gone");
      const report = await sweepStale("process");
      assert.deepEqual(report.removed.sort(), [join(root, "other-child"), join(root, "recycled")]);
      assert.ok(existsSync(join(root, "live")));
      assert.equal(await startTime(sleeper.pid!), start, "a process that is not the recorded child lives");
    } finally {
      sleeper.kill("SIGKILL");
      await exited;
    }
  });

  it("leaves alone what has no valid record, and removes a gone writer's half-written record", async () => {
    const root = await ensureRunRoot("process");
    await mkdir(join(root, "no-record"));
    await mkdir(join(root, "bad-record"));
    await writeFile(join(root, "bad-record.owner.json"), "{ not json");
    await mkdir(join(root, "linked-record"));
    const gone = join(work.dir, `gone-record-${n}`);
    await recordGoneOwner(gone);
    await symlink(`${gone}.owner.json`, join(root, "linked-record.owner.json"));
    const { pid, start } = await goneProcess();
    const half = join(root, `.x.owner.json.${pid}-${start}-0a0b.tmp`);
    await writeFile(half, "{");
    const report = await sweepStale("process");
    assert.deepEqual(report.removed, [half]);
    for (const name of ["no-record", "bad-record", "linked-record"]) assert.ok(existsSync(join(root, name)));
    assert.deepEqual(
      report.leftAlone.map((l) => l.path).sort(),
      ["bad-record.owner.json", "linked-record.owner.json", "no-record"].map((p) => join(root, p)).sort(),
    );
  });

  it("creates a run directory with its record beside it, and removes both", async () => {
    const dir = await createRunDir("process", "fresh");
    assert.equal((await stat(dir)).mode & 0o777, 0o700);
    assert.equal(await ownerOf("process", "fresh"), "live");
    await assert.rejects(createRunDir("process", "fresh"), "an id is claimed once");
    assert.deepEqual(
      await sweepStale("process"),
      { removed: [], leftAlone: [] },
      "this Fennec's own is live",
    );
    await removeRunDir(dir);
    assert.ok(!existsSync(dir) && !existsSync(`${dir}.owner.json`));
  });
});
