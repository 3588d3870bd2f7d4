import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { after } from "node:test";
import type { VmSandboxConfig } from "../../src/config/function-config.js";
import { VmDriver } from "../../src/sandbox/drivers/vm/driver.js";
import { testConfig } from "../helpers/config.js";
import { processFixtureCopy, ROOT } from "../helpers/paths.js";
import { runConformance } from "./suite.js";

// Needs qemu-system-x86 (and, for the Linux guest, the kernel guest/linux/build.sh builds);
// .ci/run installs and builds both. Guests run under TCG here: KVM on this host is PVM.
const UNIKERNELS = join(ROOT, "test", "fixtures", "unikernel");
// A guest that dies ends its QEMU (`-no-reboot`; the Linux agent reboots when the function exits),
// so the exit code in FN_CRASHED's details is QEMU's, not the function's: the cases check it is one.
// The Linux guest caches each function's packed root in `<its dir>/.fennec/vm/`: the guests run
// on a copy of the fixture in a temporary directory, removed when the file's suites are done.
const fixture = await processFixtureCopy();
after(() => fixture.cleanup());
const PROCESS_FIXTURE = fixture.dir;

function vmConfig(over: Partial<VmSandboxConfig>): VmSandboxConfig {
  return {
    kind: "vm",
    kernel: undefined,
    image: undefined,
    memoryMiB: 256,
    cpus: 1,
    cmdline: "",
    hypervisor: { type: "microvm", "disk-type": "9p" },
    handler: undefined,
    command: undefined,
    env: {},
    transport: "channel",
    snapshot: false,
    ...over,
  };
}

const unikernel = (name: string) =>
  testConfig({
    id: { user: "default", name: `uk-${name}` },
    key: `default/uk-${name}`,
    dir: UNIKERNELS,
    timeoutMs: 20_000,
    queueTimeoutMs: 60_000, // a Linux guest boots in seconds under TCG
    sandbox: vmConfig({ kernel: join(UNIKERNELS, `${name}.elf`), memoryMiB: 16 }),
  });

runConformance("vm (unikernel, microvm)", async () => ({
  driver: new VmDriver({ accel: "auto" }),
  echo: unikernel("echo"),
  hang: unikernel("hang"),
  fail: unikernel("fail"),
  crash: { config: unikernel("fail") }, // it panics, and a panic ends QEMU
  failedStart: { skip: "no unikernel fixture dies before it is ready (noready.elf waits for ever)" },
  streaming: { skip: "the unikernel fixtures are C programs that serve echo, hang and fail only" },
}));

/** The process driver's fixture, packed with Node into Fennec's Linux guest. */
const linux = (name: string, mode: string, hypervisor: VmSandboxConfig["hypervisor"]) =>
  testConfig({
    id: { user: "default", name: `${hypervisor.type}-${name}` },
    key: `default/${hypervisor.type}-${name}`,
    dir: PROCESS_FIXTURE,
    timeoutMs: 20_000,
    queueTimeoutMs: 60_000, // a Linux guest boots in seconds under TCG
    sandbox: vmConfig({ command: [process.execPath, "server.mjs", mode], hypervisor }),
  });

for (const hypervisor of [
  { type: "microvm", "disk-type": "9p" },
  { type: "qemu", "disk-type": "block" },
] as const) {
  runConformance(`vm (Linux guest, ${hypervisor.type}, ${hypervisor["disk-type"]})`, async () => ({
    driver: new VmDriver({ accel: "auto" }),
    echo: linux("echo", "echo", hypervisor),
    hang: linux("hang", "hang", hypervisor),
    fail: linux("fail", "fail", hypervisor),
    crash: { config: linux("fail", "fail", hypervisor) },
    failedStart: { config: linux("crash-at-start", "crash-at-start", hypervisor) },
  }));
}

// A UniFaaS guest on an IP network: the fixture serves on 0.0.0.0:8080 and calls the `%callback`
// it finds on the kernel command line; the kernel configures eth0 from `ip=`.
const UNIFAAS_CMDLINE = "ip=%ip::%gateway:%netmask::eth0:off callback=%callback";
const onNetwork = (name: string, mode: string, transport: "user" | "tap") =>
  testConfig({
    id: { user: "default", name: `${transport}-${name}` },
    key: `default/${transport}-${name}`,
    dir: PROCESS_FIXTURE,
    timeoutMs: 20_000,
    queueTimeoutMs: 60_000,
    sandbox: vmConfig({
      command: [process.execPath, "server.mjs", mode],
      cmdline: UNIFAAS_CMDLINE,
      transport,
      hypervisor: { type: "microvm", "disk-type": "block" },
    }),
  });

runConformance("vm (Linux guest, microvm, QEMU user-mode network)", async () => ({
  driver: new VmDriver({ accel: "auto" }),
  echo: onNetwork("echo", "echo", "user"),
  hang: onNetwork("hang", "hang", "user"),
  fail: onNetwork("fail", "fail", "user"),
  crash: { config: onNetwork("fail", "fail", "user") },
  failedStart: { config: onNetwork("crash-at-start", "crash-at-start", "user") },
}));

// Taps only inside a network namespace this test creates (and removes): no address outside it.
runConformance("vm (Linux guest, microvm, UniFaaS taps in a test namespace)", async () => {
  const netns = `fennec-vmtest-${process.pid}`;
  execFileSync("ip", ["netns", "add", netns]);
  return {
    driver: new VmDriver({ accel: "auto", netns }),
    echo: onNetwork("echo", "echo", "tap"),
    hang: onNetwork("hang", "hang", "tap"),
    fail: onNetwork("fail", "fail", "tap"),
    crash: { config: onNetwork("fail", "fail", "tap") },
    failedStart: { config: onNetwork("crash-at-start", "crash-at-start", "tap") },
    // Taps are leased from a pool, not named after instances: once every instance is gone, none is left.
    driverLeftovers: async () =>
      execFileSync("ip", ["-n", netns, "-o", "link", "show", "type", "tun"], { encoding: "utf8" })
        .split("\n")
        .filter(Boolean),
    cleanup: async () => {
      execFileSync("ip", ["netns", "del", netns]);
    },
  };
});
