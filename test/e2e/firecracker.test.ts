import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { VmDriver } from "../../src/sandbox/drivers/vm/driver.js";
import { firecrackerUnavailable } from "../../src/sandbox/drivers/vm/firecracker.js";
import { guestKernel } from "../../src/sandbox/drivers/vm/linux-guest.js";
import { runRoot } from "../../src/sandbox/run-dir.js";
import { testConfig } from "../helpers/config.js";
import { processFixtureCopy } from "../helpers/paths.js";
import { bodyOf, bytesOf } from "../helpers/body.js";

// A REAL Firecracker booting a real guest through the vm driver. This is the one test allowed to
// skip under CI=true: no Firecracker binary can exist on the CI machine kind (it is in neither
// Debian nor npm and cannot be built there, see ../shared/reference/feasibility.md §5), and that
// machine's KVM is a nested PVM kind Firecracker cannot use. Wherever `firecracker` is on PATH (or
// FIRECRACKER_EXE names it), /dev/kvm is usable and the guest kernel is built, it runs. The
// driver's Firecracker path is tested without a binary in test/unit/vm-firecracker.test.ts.
function skipReason(): string | undefined {
  const unavailable = firecrackerUnavailable();
  if (unavailable) return unavailable;
  try {
    guestKernel();
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

describe("Firecracker, for real (the vm driver, Fennec's Linux guest on a tap)", () => {
  const skip = skipReason();
  const netns = `fennec-fce2e-${process.pid}`;
  // The guest's packed root is cached in the function's directory: a copy of the fixture, removed after.
  let fixture: Awaited<ReturnType<typeof processFixtureCopy>> | undefined;
  before(async () => {
    if (skip) return;
    execFileSync("ip", ["netns", "add", netns]);
    fixture = await processFixtureCopy();
  });
  after(async () => {
    if (skip) return;
    execFileSync("ip", ["netns", "del", netns]);
    await fixture?.cleanup();
  });

  it(
    "boots a command that serves on the guest's 8080, calls it, and leaves nothing behind",
    { skip: skip ?? false, timeout: 300_000 },
    async () => {
      const driver = new VmDriver({ netns });
      const id = `fc-e2e-${process.pid}`;
      const config = testConfig({
        id: { user: "default", name: "fc-echo" },
        key: "default/fc-echo",
        dir: fixture!.dir,
        sandbox: {
          kind: "vm",
          kernel: undefined,
          image: undefined,
          memoryMiB: 256,
          cpus: 1,
          // As UniFaaS's Linux images: the kernel configures eth0; the guest finds %callback here.
          cmdline: "ip=%ip::%gateway:%netmask::eth0:off callback=%callback",
          hypervisor: { type: "firecracker", "copy-rootfs": true },
          handler: undefined,
          command: [process.execPath, "server.mjs", "echo"],
          env: {},
          transport: "tap",
          snapshot: false,
        },
      });
      try {
        await driver.prepare(config);
        const handle = await driver.start({
          instanceId: id,
          config,
          callbackUrl: `http://127.0.0.1:1/ready/${id}`,
          waitForCallback: () => new Promise(() => undefined),
          signal: AbortSignal.timeout(240_000),
        });
        const res = await handle.invoke(
          { method: "POST", path: "/x", query: "", headers: {}, body: bodyOf("over a tap") },
          { signal: AbortSignal.timeout(60_000) },
        );
        assert.equal(res.status, 200);
        assert.equal((await bytesOf(res.body)).toString(), "over a tap");
        await handle.destroy();
        assert.equal(existsSync(join(runRoot("vm"), id)), false, "the run directory is removed");
        const links = execFileSync("ip", ["-n", netns, "-o", "link", "show"], { encoding: "utf8" });
        assert.doesNotMatch(links, /faas\d+:/, "the tap is released");
      } finally {
        await driver.close();
      }
    },
  );
});
