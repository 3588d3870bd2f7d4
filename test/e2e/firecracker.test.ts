import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { cacheDir } from "../../src/sandbox/drivers/vm/linux-guest.js";
import { firecrackerUnavailable, FirecrackerVm } from "../../src/sandbox/drivers/vm/firecracker.js";
import { ROOT, tempDir } from "../helpers/paths.js";

// A REAL Firecracker booting real guests. This is the one test allowed to skip under CI=true: no
// Firecracker binary can exist on the CI machine kind (it is in neither Debian nor npm and cannot
// be built there, see ../shared/reference/feasibility.md §5), and that machine's KVM is a nested
// PVM kind Firecracker cannot use. Wherever `firecracker` is on PATH (or FIRECRACKER_EXE names it)
// and /dev/kvm is usable, it runs. The API client itself is tested without a binary in
// test/unit/firecracker.test.ts.
const unavailable = firecrackerUnavailable();
const guestDir = process.env["FENNEC_GUEST_DIR"] ?? join(cacheDir(), "guest-linux", "current");
const kernel = join(guestDir, "vmlinux");
const initramfs = join(guestDir, "initramfs.cpio.gz");
const unikernel = join(ROOT, "test", "fixtures", "unikernel", "echo.elf");

function skipReason(needs: string[]): string | undefined {
  if (unavailable) return unavailable;
  const missing = needs.filter((f) => !existsSync(f));
  return missing.length
    ? `missing ${missing.join(", ")} (build the guest with guest/linux/build.sh)`
    : undefined;
}

/** Resolves once the VM's output (its serial console) has contained `pattern`. */
function seen(vm: FirecrackerVm, pattern: string | RegExp, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let text = vm.output;
    const test = () => (typeof pattern === "string" ? text.includes(pattern) : pattern.test(text));
    if (test()) return resolve();
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`not seen within ${ms} ms: ${pattern}; output ends with:\n${vm.output.slice(-2000)}`));
    }, ms);
    const stop = vm.onOutput((chunk) => {
      text = (text + chunk).slice(-65536);
      if (!test()) return;
      clearTimeout(timer);
      stop();
      resolve();
    });
  });
}

describe("Firecracker, for real", () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  let n = 0;
  const vms: FirecrackerVm[] = [];
  before(async () => {
    tmp = await tempDir("fennec-fc-e2e-");
  });
  after(async () => {
    for (const vm of vms) await vm.kill();
    await tmp.cleanup();
  });
  const runDir = async () => {
    const dir = join(tmp.dir, `run-${n++}`);
    await mkdir(dir);
    return dir;
  };

  it(
    "boots Fennec's Linux guest kernel, snapshots it, and restores the snapshot",
    { skip: skipReason([kernel, initramfs]) ?? false, timeout: 300_000 },
    async () => {
      const vm = await FirecrackerVm.start({
        id: "fennec-e2e-linux",
        runDir: await runDir(),
        vcpus: 1,
        memoryMiB: 128,
        kernel,
        initrd: initramfs,
        bootArgs: "console=ttyS0 reboot=k panic=1 pci=off",
        vsock: { guestCid: 3 },
      });
      vms.push(vm);
      await seen(vm, "Linux version", 240_000);
      assert.equal((await vm.info()).state, "Running");

      const state = join(tmp.dir, "linux.state");
      const mem = join(tmp.dir, "linux.mem");
      await vm.createSnapshot(state, mem);
      assert.equal((await vm.info()).state, "Paused");
      assert.ok(existsSync(state) && existsSync(mem));
      await vm.kill();

      const restored = await FirecrackerVm.start({
        id: "fennec-e2e-restored",
        runDir: await runDir(),
        vcpus: 1,
        memoryMiB: 128,
        restore: { snapshotPath: state, memPath: mem },
      });
      vms.push(restored);
      assert.equal((await restored.info()).state, "Running");
      await restored.kill();
    },
  );

  it(
    "boots a Fennec unikernel (PVH) whose guest channel on COM1 says READY",
    { skip: skipReason([unikernel]) ?? false, timeout: 300_000 },
    async () => {
      const vm = await FirecrackerVm.start({
        id: "fennec-e2e-unikernel",
        runDir: await runDir(),
        vcpus: 1,
        memoryMiB: 64,
        kernel: unikernel,
      });
      vms.push(vm);
      // Firecracker's serial port is COM1 on its stdout: the READY frame (docs/guest-channel.md)
      // is type 1 on stream 0 with a little-endian length.
      await seen(vm, "\x01\x00\x00\x00\x00", 240_000);
      await vm.kill();
    },
  );
});
