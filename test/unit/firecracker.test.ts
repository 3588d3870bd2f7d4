import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { FirecrackerVm, type FirecrackerStartOptions } from "../../src/sandbox/drivers/vm/firecracker.js";
import { TapPool } from "../../src/sandbox/drivers/vm/taps.js";
import { waitForSocket } from "../../src/sandbox/wait-socket.js";
import { ROOT, tempDir } from "../helpers/paths.js";

// The API client against a fake Firecracker (test/fixtures/firecracker/fake-firecracker.mjs) that
// checks each request against Firecracker's documented bodies and ordering rules. The tap test
// needs root and iproute2 (it makes its own network namespace). test/e2e/firecracker.test.ts runs a
// real Firecracker where one exists.
const FAKE = join(ROOT, "test", "fixtures", "firecracker", "fake-firecracker.mjs");
const run = promisify(execFile);

interface Call {
  method: string;
  path: string;
  body: Record<string, unknown> | undefined;
  status: number;
  fault_message?: string;
}

async function calls(runDir: string): Promise<Call[]> {
  const text = await readFile(join(runDir, "calls.jsonl"), "utf8").catch(() => "");
  return text
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Call);
}

function alive(pid: number | undefined): boolean {
  try {
    process.kill(pid!, 0);
    return true;
  } catch {
    return false;
  }
}

describe("FirecrackerVm (its API, against a fake Firecracker)", () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  let kernel: string;
  let image: string;
  let n = 0;
  const savedExe = process.env["FIRECRACKER_EXE"];
  const vms: FirecrackerVm[] = [];

  before(async () => {
    tmp = await tempDir("fennec-fc-");
    kernel = join(tmp.dir, "vmlinux");
    image = join(tmp.dir, "image.ext4");
    await writeFile(kernel, "not really a kernel");
    await writeFile(image, "the function's root filesystem");
    process.env["FIRECRACKER_EXE"] = FAKE;
  });
  after(async () => {
    for (const vm of vms) await vm.kill();
    if (savedExe === undefined) delete process.env["FIRECRACKER_EXE"];
    else process.env["FIRECRACKER_EXE"] = savedExe;
    await tmp.cleanup();
  });

  const newRunDir = async (control?: object) => {
    const dir = join(tmp.dir, `run-${n++}`);
    await mkdir(dir);
    if (control) await writeFile(join(dir, "fake-firecracker.json"), JSON.stringify(control));
    return dir;
  };
  const start = async (opts: Partial<FirecrackerStartOptions> & { runDir: string }) => {
    const vm = await FirecrackerVm.start({
      id: "0b6c61d2-7a4e-4a43-9d5c-1f0f3e1d2a10",
      vcpus: 1,
      memoryMiB: 128,
      kernel,
      ...opts,
    });
    vms.push(vm);
    return vm;
  };

  it("boots: machine config, boot source, a copied root drive, then InstanceStart", async () => {
    const runDir = await newRunDir();
    const vm = await start({
      runDir,
      vcpus: 2,
      memoryMiB: 256,
      bootArgs: "console=ttyS0 reboot=k panic=1",
      rootfs: { path: image },
    });
    const log = await calls(runDir);
    assert.deepEqual(
      log.map((c) => `${c.method} ${c.path} ${c.status}`),
      ["PUT /machine-config 204", "PUT /boot-source 204", "PUT /drives/rootfs 204", "PUT /actions 204"],
    );
    assert.deepEqual(log[0]!.body, { vcpu_count: 2, mem_size_mib: 256 });
    assert.deepEqual(log[1]!.body, {
      kernel_image_path: kernel,
      boot_args: "console=ttyS0 reboot=k panic=1",
    });
    assert.deepEqual(log[2]!.body, {
      drive_id: "rootfs",
      path_on_host: "rootfs.ext4", // relative to the run directory, Firecracker's cwd
      is_root_device: true,
      is_read_only: false,
    });
    assert.deepEqual(log[3]!.body, { action_type: "InstanceStart" });
    // copy-rootfs: a private copy in the run directory, the image itself untouched.
    assert.equal(await readFile(join(runDir, "rootfs.ext4"), "utf8"), "the function's root filesystem");
    await waitFor(() => vm.output.includes("cmdline"));
    assert.match(vm.output, /fake guest: kernel .*vmlinux cmdline "console=ttyS0 reboot=k panic=1"/);
    await vm.kill();
  });

  it("uses an image in place, read-only, without copy-rootfs; passes an initrd", async () => {
    const runDir = await newRunDir();
    const initrd = join(tmp.dir, "initrd.cpio");
    await writeFile(initrd, "");
    const vm = await start({ runDir, rootfs: { path: image, copy: false }, initrd });
    const log = await calls(runDir);
    assert.deepEqual(log[1]!.body, { kernel_image_path: kernel, initrd_path: initrd });
    assert.deepEqual(log[2]!.body, {
      drive_id: "rootfs",
      path_on_host: image,
      is_root_device: true,
      is_read_only: true,
    });
    assert.ok(!existsSync(join(runDir, "rootfs.ext4")));
    await vm.kill();
  });

  it("attaches a leased tap as eth0, running inside the tap's network namespace", async () => {
    const ns = `fennec-test-${process.pid}-fc`;
    await run("ip", ["netns", "add", ns]);
    const pool = await TapPool.open({ netns: ns, stateDir: join(tmp.dir, "taps") });
    try {
      const lease = await pool.lease();
      const runDir = await newRunDir();
      const vm = await start({ runDir, tap: { name: lease.tap, mac: lease.mac }, netns: ns });
      const body = (await calls(runDir)).find((c) => c.path === "/network-interfaces/eth0")?.body;
      assert.deepEqual(body, { iface_id: "eth0", host_dev_name: "faas0", guest_mac: "02:fc:0a:64:00:02" });
      await vm.kill();
      // The fake, like Firecracker, opens the tap in its own namespace: outside it there is none.
      const outside = await newRunDir();
      await assert.rejects(start({ runDir: outside, tap: { name: lease.tap } }), (err: Error) => {
        assert.match(err.message, /PUT \/network-interfaces\/eth0 failed \(400\): Open tap device failed/);
        return true;
      });
    } finally {
      await pool.close();
      await run("ip", ["netns", "del", ns]);
    }
  });

  it("surfaces an API fault as a clear error and cleans up", async () => {
    const runDir = await newRunDir();
    await assert.rejects(
      start({ runDir, kernel: join(tmp.dir, "missing-vmlinux"), rootfs: { path: image } }),
      (err: Error & { code: string; details: Record<string, unknown> }) => {
        assert.equal(err.code, "SANDBOX_START_FAILED");
        assert.match(
          err.message,
          /Firecracker PUT \/boot-source failed \(400\): The kernel file .*missing-vmlinux/,
        );
        assert.equal(err.details["status"], 400);
        return true;
      },
    );
    assert.ok(!existsSync(join(runDir, "rootfs.ext4")), "the copied drive is removed");
    assert.ok(!existsSync(join(runDir, "firecracker.sock")));

    const injected = await newRunDir({
      faults: { "PUT /drives/rootfs": "Unable to create the block device" },
    });
    await assert.rejects(
      start({ runDir: injected, rootfs: { path: image } }),
      /PUT \/drives\/rootfs failed \(400\): Unable to create the block device/,
    );
    assert.ok(!existsSync(join(injected, "rootfs.ext4")), "the copied drive is removed");
  });

  it("reports a Firecracker that exits before serving its API, with its output", async () => {
    const runDir = await newRunDir({ exitAtStart: 3 });
    await assert.rejects(start({ runDir }), (err: Error & { code: string }) => {
      assert.equal(err.code, "SANDBOX_START_FAILED");
      assert.match(err.message, /exited \(code 3\) before opening its API socket/);
      assert.match(err.message, /told to exit at start/);
      return true;
    });
  });

  it("says clearly that Firecracker is not installed, and how to provide it", async () => {
    const runDir = await newRunDir();
    process.env["FIRECRACKER_EXE"] = join(tmp.dir, "no-such-firecracker");
    try {
      await assert.rejects(
        start({ runDir }),
        /Firecracker is not installed: FIRECRACKER_EXE=.* is not an executable/,
      );
      delete process.env["FIRECRACKER_EXE"];
      const savedPath = process.env["PATH"];
      process.env["PATH"] = tmp.dir;
      try {
        await assert.rejects(start({ runDir }), (err: Error & { code: string }) => {
          assert.equal(err.code, "SANDBOX_START_FAILED");
          assert.match(err.message, /Firecracker is not installed: no `firecracker` on PATH/);
          assert.match(err.message, /FIRECRACKER_EXE/);
          return true;
        });
      } finally {
        process.env["PATH"] = savedPath;
      }
    } finally {
      process.env["FIRECRACKER_EXE"] = FAKE;
    }
  });

  it("kill() ends the process and removes the copied drive and the API socket", async () => {
    const runDir = await newRunDir();
    const vm = await start({ runDir, rootfs: { path: image } });
    const pid = vm.pid;
    assert.ok(alive(pid));
    await vm.kill();
    assert.deepEqual(await vm.exited, { exitCode: 137, signal: "SIGKILL" });
    assert.ok(!alive(pid));
    for (const f of ["rootfs.ext4", "firecracker.sock"]) assert.ok(!existsSync(join(runDir, f)), f);
    await vm.kill(); // idempotent
  });
});

describe("the fake Firecracker itself", () => {
  it("refuses what Firecracker's documentation says Firecracker refuses", async () => {
    const tmp = await tempDir("fennec-fc-fake-");
    const sock = join(tmp.dir, "api.sock");
    await writeFile(join(tmp.dir, "vmlinux"), "");
    const child = spawn(FAKE, ["--api-sock", sock, "--id", "rules"], { cwd: tmp.dir, stdio: "ignore" });
    try {
      // The socket file appears at bind(), before listen(): a connection then is refused. Wait
      // for one that is accepted (CI failed once on the file alone).
      await waitForSocket(sock, AbortSignal.timeout(60_000));
      const api = (method: string, path: string, body: object) =>
        new Promise<string>((resolve, reject) => {
          const payload = JSON.stringify(body);
          const req = httpRequest(
            { socketPath: sock, method, path, headers: { "Content-Length": Buffer.byteLength(payload) } },
            (res) => {
              let text = "";
              res.on("data", (d: Buffer) => (text += d.toString()));
              res.on("end", () => resolve(`${res.statusCode} ${text}`));
            },
          );
          req.on("error", reject);
          req.end(payload);
        });
      const start = { action_type: "InstanceStart" };
      assert.match(await api("PUT", "/actions", start), /^400 .*without kernel configuration/);
      assert.match(
        await api("PUT", "/machine-config", { vcpu_count: 1 }),
        /^400 .*missing field `mem_size_mib`/,
      );
      assert.match(
        await api("PUT", "/boot-source", { kernel_image_path: "vmlinux", x: 1 }),
        /^400 .*unknown field `x`/,
      );
      assert.match(await api("PUT", "/boot-source", { kernel_image_path: "vmlinux" }), /^204/);
      assert.match(await api("PUT", "/actions", start), /^204/);
      assert.match(
        await api("PUT", "/boot-source", { kernel_image_path: "vmlinux" }),
        /^400 .*after starting/,
      );
      assert.match(await api("PUT", "/actions", start), /^400 .*after starting/);
    } finally {
      child.kill("SIGKILL");
      await tmp.cleanup();
    }
  });
});

// Generous: CI runs on a busy machine; a real failure is the only way to reach it.
async function waitFor(condition: () => boolean, ms = 60_000): Promise<void> {
  const until = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > until) throw new Error("timed out waiting");
    await new Promise((r) => setTimeout(r, 5));
  }
}
