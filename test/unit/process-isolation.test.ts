import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { FunctionConfig } from "../../src/config/function-config.js";
import { ProcessDriver } from "../../src/sandbox/drivers/process/driver.js";
import { Cgroup } from "../../src/sandbox/cgroups.js";
import { testConfig } from "../helpers/config.js";
import { emptyGet, loopbackTarget, startInstance } from "../helpers/instance.js";
import { ROOT } from "../helpers/paths.js";
import { bytesOf } from "../helpers/body.js";

// Needs root and bubblewrap (.ci/run installs it); under CI=true a missing tool fails, never skips.
const fn = (mode: string, memoryMiB = 256, pids = 512, env: Record<string, string> = {}): FunctionConfig =>
  testConfig({
    id: { user: "default", name: mode },
    key: `default/${mode}`,
    dir: join(ROOT, "test", "fixtures", "process"),
    timeoutMs: 10_000,
    sandbox: {
      kind: "process",
      handler: undefined,
      command: [process.execPath, "server.mjs", mode],
      env,
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
      const result = JSON.parse((await bytesOf(res.body)).toString()) as Record<string, string>;
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
      const started = Number((await bytesOf((await inst.invoke(emptyGet())).body)).toString());
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

  it("runs the function as nobody, with no capabilities, no new privileges and a seccomp filter", async () => {
    const inst = await start(fn("privileges"));
    try {
      const res = await inst.invoke(emptyGet());
      const result = JSON.parse((await bytesOf(res.body)).toString()) as {
        status: Record<string, string>;
        unshare: { status: number | null; stderr: string };
      };
      const field = (name: string) => result.status[name];
      assert.match(field("Uid") ?? "", /^65534\s+65534\s+65534\s+65534$/);
      assert.match(field("Gid") ?? "", /^65534\s+65534\s+65534\s+65534$/);
      for (const caps of ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"])
        assert.equal(field(caps), "0000000000000000", caps);
      assert.equal(field("NoNewPrivs"), "1");
      assert.equal(field("Seccomp"), "2", "a seccomp filter is in force");
      assert.notEqual(result.unshare.status, 0, "unshare --user must fail");
      assert.match(result.unshare.stderr, /Operation not permitted/, "the filter answers EPERM");
      // On the host too, every process of the instance is nobody's, not root's: bwrap run by root
      // would map the sandbox's 65534 to host uid 0.
      const pids = new Set<string>();
      for (const dir of Cgroup.dirsFor(inst.id))
        for (const pid of (await readFile(join(dir, "cgroup.procs"), "utf8")).split("\n").filter(Boolean))
          pids.add(pid);
      assert.ok(pids.size > 0, "the instance's processes are in its cgroups");
      for (const pid of pids) {
        const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => undefined);
        if (status === undefined) continue; // exited meanwhile
        assert.match(
          /^Uid:\s*(.*)$/m.exec(status)?.[1] ?? "",
          /^65534\s+65534\s+65534\s+65534$/,
          `host pid ${pid}`,
        );
      }
    } finally {
      await inst.destroy();
    }
  });

  it("says how to fix a function directory its unprivileged user cannot reach", async () => {
    // mkdtemp makes a 0700 directory: nobody (the sandbox's uid) cannot search it.
    const closed = await mkdtemp(join(tmpdir(), "fennec-closed-"));
    try {
      const config = { ...fn("echo"), dir: closed };
      await assert.rejects(start(config), (err: Error & { code?: string }) => {
        assert.equal(err.code, "SANDBOX_START_FAILED");
        assert.match(err.message, new RegExp(`chmod o\\+x ${closed}`));
        return true;
      });
    } finally {
      await rm(closed, { recursive: true, force: true });
    }
  });

  it("does not let a function redirect Fennec by swapping its socket for a symlink", async () => {
    // A decoy host socket, as /var/run/docker.sock would be: Fennec must never send to it.
    const decoyDir = await mkdtemp(join(tmpdir(), "fennec-decoy-"));
    const decoyPath = join(decoyDir, "decoy.sock");
    let decoyHits = 0;
    const decoy = createServer((_req, res) => {
      decoyHits++;
      res.end("decoy");
    });
    await new Promise<void>((r) => decoy.listen(decoyPath, () => r()));
    const inst = await start(fn("swap-socket"));
    try {
      // The function swaps its socket for a symlink to the decoy, then closes the connection.
      const swapped = await inst.invoke(emptyGet(`target=${encodeURIComponent(decoyPath)}`));
      assert.equal((await bytesOf(swapped.body)).toString(), "swapped");
      for (let i = 0; i < 2; i++) {
        const res = await inst.invoke(emptyGet());
        assert.equal(
          (await bytesOf(res.body)).toString(),
          "served by the function",
          `request ${i} reached the function`,
        );
      }
      assert.equal(decoyHits, 0);
    } finally {
      await inst.destroy();
      await new Promise<void>((r) => decoy.close(() => r()));
      await rm(decoyDir, { recursive: true, force: true });
    }
  });
});
