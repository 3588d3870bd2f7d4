import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { VmDriver } from "../../src/sandbox/drivers/vm/driver.js";
import { runRoot } from "../../src/sandbox/run-dir.js";
import { testConfig } from "../helpers/config.js";
import { ROOT, tempDir } from "../helpers/paths.js";

// The vm driver's Firecracker path, against the fake Firecracker (test/fixtures/firecracker/):
// it checks every API body and the documented ordering but runs no guest, so this test sees the
// configuration the driver sends and that it cleans up; a real guest is test/e2e/firecracker.test.ts,
// which runs wherever a Firecracker binary and KVM exist. Needs root and iproute2 (its taps live
// in a network namespace this test creates).
const FAKE = join(ROOT, "test", "fixtures", "firecracker", "fake-firecracker.mjs");

describe("vm driver on Firecracker (UniFaaS: kernel, copied root, a tap)", () => {
  const netns = `fennec-fctest-${process.pid}`;
  let tmp: { dir: string; cleanup: () => Promise<void> };
  const saved = process.env["FIRECRACKER_EXE"];
  before(async () => {
    execFileSync("ip", ["netns", "add", netns]);
    tmp = await tempDir();
    await writeFile(join(tmp.dir, "vmlinux"), "a kernel");
    await writeFile(join(tmp.dir, "rootfs.ext4"), "a root image");
    process.env["FIRECRACKER_EXE"] = FAKE;
  });
  after(async () => {
    if (saved === undefined) delete process.env["FIRECRACKER_EXE"];
    else process.env["FIRECRACKER_EXE"] = saved;
    execFileSync("ip", ["netns", "del", netns]);
    await tmp.cleanup();
  });

  const config = () =>
    testConfig({
      dir: tmp.dir,
      sandbox: {
        kind: "vm",
        kernel: join(tmp.dir, "vmlinux"),
        image: join(tmp.dir, "rootfs.ext4"),
        memoryMiB: 128,
        cpus: 2,
        cmdline: "net.ip=%ip net.gw=%gateway net.mask=%netmask callback.url=%callback",
        hypervisor: { type: "firecracker", "copy-rootfs": true },
        handler: undefined,
        command: undefined,
        env: {},
        transport: "tap",
        snapshot: false,
      },
    });

  it("configures and boots the microVM through the API, then removes everything when the start ends", async () => {
    const driver = new VmDriver({ netns });
    const id = `fc-${process.pid}`;
    const controller = new AbortController();
    const starting = driver.start({
      instanceId: id,
      config: config(),
      callbackUrl: `http://127.0.0.1:1/ready/${id}`,
      waitForCallback: () => new Promise(() => undefined),
      signal: controller.signal,
    });
    starting.catch(() => undefined);
    // The fake answers but runs no guest, so nothing calls back: read what the driver asked for.
    const log = join(runRoot("vm"), id, "calls.jsonl");
    let calls: Array<{ method: string; path: string; body: Record<string, unknown>; status: number }> = [];
    // Up to a minute: CI runs on a busy machine.
    for (let i = 0; i < 2400 && !calls.some((c) => c.path === "/actions"); i++) {
      await new Promise((r) => setTimeout(r, 25));
      const text = await readFile(log, "utf8").catch(() => "");
      calls = text
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l) as (typeof calls)[number]);
    }
    const byPath = new Map(calls.map((c) => [`${c.method} ${c.path}`, c]));
    assert.ok(
      calls.every((c) => c.status === 204),
      JSON.stringify(calls),
    );
    assert.deepEqual(byPath.get("PUT /machine-config")?.body, { vcpu_count: 2, mem_size_mib: 128 });
    const boot = byPath.get("PUT /boot-source")?.body as { boot_args: string; kernel_image_path: string };
    assert.equal(boot.kernel_image_path, join(tmp.dir, "vmlinux"));
    // The UniFaaS placeholders, from the tap's /30: guest second address, host side first.
    assert.equal(
      boot.boot_args,
      `net.ip=10.100.0.2 net.gw=10.100.0.1 net.mask=255.255.255.252 callback.url=http://10.100.0.1:3000/ready/${id}`,
    );
    const drive = byPath.get("PUT /drives/rootfs")?.body as { path_on_host: string; is_root_device: boolean };
    assert.equal(drive.is_root_device, true);
    assert.notEqual(
      drive.path_on_host,
      join(tmp.dir, "rootfs.ext4"),
      "copy-rootfs gives the instance a copy",
    );
    const nic = byPath.get("PUT /network-interfaces/eth0")?.body as { host_dev_name: string };
    assert.match(nic.host_dev_name, /^faas\d+$/);
    assert.deepEqual(byPath.get("PUT /actions")?.body, { action_type: "InstanceStart" });

    controller.abort(new Error("the test ends the start"));
    await assert.rejects(starting, /the test ends the start/);
    assert.equal(existsSync(join(runRoot("vm"), id)), false, "the run directory is removed");
    const links = execFileSync("ip", ["-n", netns, "-o", "link", "show"], { encoding: "utf8" });
    assert.doesNotMatch(links, new RegExp(`${nic.host_dev_name}:`), "the tap is released");
    await driver.close();
  });

  it("says Firecracker is not installed, and how to get it, when there is no binary: at start, deploy and build", async () => {
    process.env["FIRECRACKER_EXE"] = join(tmp.dir, "no-firecracker");
    try {
      await assert.rejects(
        new VmDriver({ netns }).start({
          instanceId: `fc-missing-${process.pid}`,
          config: config(),
          callbackUrl: "http://127.0.0.1:1/ready/x",
          waitForCallback: () => new Promise(() => undefined),
          signal: AbortSignal.timeout(60_000),
        }),
        /Firecracker is not installed/,
      );
      // Deploying and `fennec build` check the hypervisor the function names, not QEMU.
      await assert.rejects(new VmDriver({ netns }).prepare(config()), /Firecracker is not installed/);
      const { missing } = await new VmDriver({ netns }).packRoot(config());
      assert.match(missing ?? "", /Firecracker is not installed/);
    } finally {
      process.env["FIRECRACKER_EXE"] = FAKE;
    }
  });
});
