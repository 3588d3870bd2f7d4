import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { FunctionConfig, OciSandboxConfig } from "../../src/config/function-config.js";
import { OciDriver } from "../../src/sandbox/drivers/oci/driver.js";
import { runRoot } from "../../src/sandbox/run-dir.js";
import { testConfig } from "../helpers/config.js";
import { emptyGet, startInstance } from "../helpers/instance.js";
import { tempDir } from "../helpers/paths.js";
import { bytesOf } from "../helpers/body.js";

// Needs root, runc and runsc (.ci/run installs them); under CI=true a missing tool fails.

/** A handler that reports what its root looks like and where it may write. */
const PROBE = `
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { bytesOf } from "../helpers/body.js";
export default {
  fetch() {
    const out = {};
    for (const p of ["/written.txt", "/fn/written.txt", "/tmp/written.txt"]) {
      try { writeFileSync(p, "written"); out[p] = readFileSync(p, "utf8"); } catch (e) { out[p] = e.code; }
    }
    out.root = readdirSync("/").sort();
    out.usrBin = readdirSync("/usr/bin");
    out.shell = existsSync("/bin/sh");
    return Response.json(out);
  },
};
`;

const mountedUnder = (dir: string): string[] =>
  readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[4] ?? "")
    .filter((m) => m.startsWith(`${dir}/`));

for (const runtime of ["runc", "runsc"] as const) {
  describe(`oci handlers on the built root (${runtime})`, () => {
    const driver = new OciDriver();
    let dir: string;
    let cleanup: () => Promise<void>;
    const fn = (rootfs: OciSandboxConfig["rootfs"], revision = "r1"): FunctionConfig =>
      testConfig({
        id: { user: "default", name: `probe-${rootfs}` },
        key: `default/probe-${rootfs}`,
        dir,
        file: join(dir, "function.toml"),
        revision,
        timeoutMs: 20_000,
        sandbox: {
          kind: "oci",
          command: undefined,
          handler: join(dir, "handler.js"),
          runtime,
          env: {},
          memoryMiB: 256,
          pids: 1024,
          rootfs,
        },
      });
    const probe = async (config: FunctionConfig) => {
      const inst = await startInstance(driver, config, { startTimeoutMs: 60_000 });
      const body = (await bytesOf((await inst.invoke(emptyGet())).body)).toString();
      return { inst, result: JSON.parse(body) as Record<string, unknown> };
    };

    before(async () => {
      ({ dir, cleanup } = await tempDir("fennec-oci-rootfs-"));
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, "handler.js"), PROBE);
      await writeFile(join(dir, "function.toml"), "# test\n");
    });
    after(async () => {
      await driver.close();
      await cleanup();
    });

    it("shared: sees only Node, its libraries, the runtime and the function, read-only but /tmp", async () => {
      const { inst, result } = await probe(fn("shared"));
      try {
        assert.equal(result["/tmp/written.txt"], "written");
        // Read-only, and not the unprivileged user's to write either (gVisor checks that first).
        for (const path of ["/written.txt", "/fn/written.txt"])
          assert.ok(["EROFS", "EACCES"].includes(result[path] as string), `${path}: ${String(result[path])}`);
        assert.deepEqual(result["usrBin"], ["node"]);
        assert.equal(result["shell"], false);
        assert.ok(!(result["root"] as string[]).includes("home"), String(result["root"]));
      } finally {
        await inst.destroy();
      }
    });

    it("overlay: each instance writes its own copy; the built root never changes", async () => {
      const root = await driver.rootfs(fn("overlay"));
      const a = await probe(fn("overlay"));
      const b = await probe(fn("overlay"));
      try {
        for (const { result } of [a, b]) {
          assert.equal(result["/written.txt"], "written");
          assert.equal(result["/fn/written.txt"], "written");
          assert.deepEqual(result["usrBin"], ["node"]);
        }
        assert.ok(!existsSync(join(root.dir, "written.txt")), "the shared lower layer is untouched");
        assert.ok(!existsSync(join(root.dir, "fn", "written.txt")));
        assert.equal(mountedUnder(join(runRoot("oci"), a.inst.id)).length, 1, "one overlay per instance");
      } finally {
        await a.inst.destroy();
        await b.inst.destroy();
      }
      for (const id of [a.inst.id, b.inst.id]) {
        assert.deepEqual(mountedUnder(join(runRoot("oci"), id)), [], "overlay unmounted");
        assert.ok(!existsSync(join(runRoot("oci"), id)), "run directory removed");
      }
    });

    it("removes an older revision's root once its last instance stops", async () => {
      await writeFile(join(dir, "asset.txt"), "first");
      const old = await driver.rootfs(fn("shared", "old"));
      const inst = (await probe(fn("shared", "old"))).inst;
      let second: Awaited<ReturnType<typeof probe>>["inst"] | undefined;
      try {
        // A new revision with different content gets a root of its own; the old one stays in use.
        await writeFile(join(dir, "asset.txt"), `changed ${Date.now()}`);
        const next = await driver.rootfs(fn("shared", "new"));
        second = (await probe(fn("shared", "new"))).inst;
        assert.notEqual(next.dir, old.dir);
        assert.ok(existsSync(old.dir), "kept while an instance runs on it");
        await inst.destroy();
        assert.ok(!existsSync(old.dir), "removed after its last instance");
        await second.destroy();
        assert.ok(existsSync(next.dir), "the current root stays");
        assert.ok(readdirSync(join(dir, ".fennec", "rootfs")).includes(next.dir.split("/").pop()!));
      } finally {
        await inst.destroy();
        await second?.destroy();
      }
    });
  });
}

describe("oci with a runtime that is not installed", () => {
  it("fails the start with the Debian package to install", async () => {
    const { dir, cleanup } = await tempDir("fennec-oci-missing-");
    const path = process.env["PATH"];
    // A real lookup: runsc lives in /usr/bin, which this PATH lacks (the sbin directories are
    // always searched, and runsc is not there).
    process.env["PATH"] = join(dir, "empty");
    try {
      assert.ok(!existsSync("/usr/sbin/runsc") && !existsSync("/sbin/runsc"));
      const config = testConfig({
        dir,
        sandbox: {
          kind: "oci",
          command: ["/bin/true"],
          handler: undefined,
          runtime: "runsc",
          env: {},
          memoryMiB: 64,
          pids: 64,
          rootfs: "shared",
        },
      });
      await assert.rejects(startInstance(new OciDriver(), config), (err: Error & { code?: string }) => {
        assert.equal(err.code, "SANDBOX_START_FAILED");
        assert.match(err.message, /runsc is not installed: apt-get install runsc/);
        return true;
      });
    } finally {
      process.env["PATH"] = path;
      await cleanup();
    }
  });
});
