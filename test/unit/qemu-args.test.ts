import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { VmSandboxConfig } from "../../src/config/function-config.js";
import { qemuArgs, type QemuPlan } from "../../src/sandbox/drivers/vm/qemu-args.js";

// That the running QEMU really has the filter is checked in test/e2e/vm.test.ts (Seccomp: 2).
const plan = (over: Partial<QemuPlan> = {}): QemuPlan => ({
  vm: { hypervisor: { type: "microvm" }, memoryMiB: 128, cpus: 1 } as unknown as VmSandboxConfig,
  guest: "fennec-linux",
  accel: "tcg",
  kernel: "/k/vmlinux",
  initrd: undefined,
  append: "console=ttyS0",
  root: { dir: "/r" },
  qmpSocket: "/run/q.sock",
  channelSocket: "/run/c.sock",
  consoleLog: "/run/console.log",
  userNet: undefined,
  tap: undefined,
  ramFile: undefined,
  incoming: false,
  ...over,
});

const sandboxOf = (args: string[]) => {
  const at = args.indexOf("-sandbox");
  assert.ok(at >= 0, "QEMU gets -sandbox");
  return new Map(
    args[at + 1]!.split(",").map((kv, i) => (i === 0 ? ["enable", kv] : (kv.split("=") as [string, string]))),
  );
};

describe("QEMU command line: seccomp sandbox", () => {
  it("turns QEMU's seccomp filter on with every restriction for an ordinary VM", () => {
    for (const p of [
      plan(),
      plan({ guest: "unikernel", root: undefined }),
      plan({ tap: { name: "t0", mac: "02:00:00:00:00:01" } }),
    ]) {
      const s = sandboxOf(qemuArgs(p));
      assert.equal(s.get("enable"), "on");
      for (const key of ["obsolete", "elevateprivileges", "spawn", "resourcecontrol"])
        assert.equal(s.get(key), "deny", key);
    }
  });

  it("allows spawning only for a VM that migrates (QEMU 7.2's snapshots go through exec:cat)", () => {
    for (const p of [
      plan({ ramFile: { path: "/s/ram", share: true } }),
      plan({ ramFile: { path: "/s/ram", share: false }, incoming: true }),
    ]) {
      const s = sandboxOf(qemuArgs(p));
      assert.equal(s.get("spawn"), "allow");
      for (const key of ["obsolete", "elevateprivileges", "resourcecontrol"])
        assert.equal(s.get(key), "deny", key);
    }
  });
});
