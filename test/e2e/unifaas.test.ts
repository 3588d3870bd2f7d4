import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { copyFile, mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { FennecError } from "../../src/core/errors.js";
import { OciDriver } from "../../src/sandbox/drivers/oci/driver.js";
import { assembleRootfs, nodeInside } from "../../src/sandbox/rootfs-build.js";
import { testConfig } from "../helpers/config.js";
import { startInstance } from "../helpers/instance.js";
import { startDockerd, type TestDockerd } from "../helpers/docker.js";
import { request } from "../helpers/http.js";
import { ROOT } from "../helpers/paths.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { waitFor } from "../helpers/wait.js";

// UniFaaS's own Node benchmark app (test/fixtures/unifaas/README.md), byte for byte: it serves on
// 0.0.0.0:8080 and GETs the callback URL it gets as its first argument, or skips that on `ignore`.
const APP = join(ROOT, "test", "fixtures", "unifaas", "main.js");
const HELLO = "Hello from node!\n";

/** Adds a function running the app (as `main.js` in its directory) to a registry. */
async function addApp(registry: string, name: string, table: string): Promise<void> {
  const dir = join(registry, name);
  await mkdir(dir, { recursive: true });
  await copyFile(APP, join(dir, "main.js"));
  await writeFile(join(dir, "function.toml"), `keepalive = 30\nconcurrent-requests = 1\n${table}`);
}

// Needs qemu-system-x86 and the guest kernel of guest/linux/build.sh (.ci/run has both).
describe("UniFaaS's app as a [vm] command on QEMU's user-mode network", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({ startTimeoutMs: 90_000 });
    const vm = `[vm]\ncommand = ["${process.execPath}", "main.js"]\nmemory = 256\nhypervisor = { type = "microvm" }\n`;
    // Without a cmdline: the network and the callback come from Fennec's own kernel parameters.
    await addApp(s.registry, "vm-plain", `${vm}transport = "user"\n`);
    // As a UniFaaS function.toml has it: the placeholders ask for the user network by themselves.
    await addApp(s.registry, "vm-callback", `${vm}cmdline = "callback=%callback"\n`);
    await addApp(
      s.registry,
      "vm-ip",
      `${vm}cmdline = "ip=%ip::%gateway:%netmask::eth0:off callback=%callback"\n`,
    );
  });
  after(() => s.close());

  for (const name of ["vm-plain", "vm-callback", "vm-ip"]) {
    it(`${name}: gets the callback URL as its argument, calls it, and answers`, async () => {
      const cold = await request(`${s.url}/invoke/${name}/`);
      assert.equal(cold.status, 200, cold.text);
      assert.equal(cold.text, HELLO);
      assert.equal(cold.headers.get("x-fennec-start"), "cold");
      const warm = await request(`${s.url}/invoke/${name}/anything`);
      assert.equal(warm.text, HELLO);
      assert.equal(warm.headers.get("x-fennec-start"), "warm");
    });
  }
});

const PROBE = join(ROOT, "test", "fixtures", "port", "probe.mjs");

/** Relay processes (socket-relay.ts) still running: none may outlive its instance. */
function relays(): string[] {
  return execFileSync("ps", ["-eo", "pid=,args="], { encoding: "utf8" })
    .split("\n")
    .filter((l) => l.includes("--input-type=module") && l.includes("FENNEC_RELAY"));
}

/** Asserts what the probe saw: its loopback and nothing else, and no way to the gateway. */
function assertNoNetwork(text: string): void {
  const seen = JSON.parse(text) as { interfaces: string[]; connect: string };
  assert.deepEqual(seen.interfaces, ["lo"], text);
  assert.notEqual(seen.connect, "connected", text);
  assert.notEqual(seen.connect, null, text);
}

// Needs root, runc and runsc (.ci/run installs them).
describe("UniFaaS's app as an [oci] command serving port 8080 in its own network namespace", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer();
    for (const runtime of ["runc", "runsc"]) {
      const oci = `[oci]\nruntime = "${runtime}"\nport = 8080\n`;
      await addApp(s.registry, `oci-${runtime}`, `${oci}command = ["${process.execPath}", "main.js"]\n`);
      const probe = join(s.registry, `probe-oci-${runtime}`);
      await mkdir(probe);
      await copyFile(PROBE, join(probe, "probe.mjs"));
      await writeFile(
        join(probe, "function.toml"),
        `keepalive = 30\nconcurrent-requests = 1\n${oci}command = ["${process.execPath}", "probe.mjs"]\n`,
      );
    }
  });
  after(async () => {
    await s.close();
    assert.deepEqual(relays(), [], "no relay outlives its instance");
  });

  for (const runtime of ["runc", "runsc"]) {
    it(`oci-${runtime}: answers through the relay, cold then warm`, async () => {
      const cold = await request(`${s.url}/invoke/oci-${runtime}/`);
      assert.equal(cold.status, 200, cold.text);
      assert.equal(cold.text, HELLO);
      assert.equal(cold.headers.get("x-fennec-start"), "cold");
      const warm = await request(`${s.url}/invoke/oci-${runtime}/again`);
      assert.equal(warm.text, HELLO);
      assert.equal(warm.headers.get("x-fennec-start"), "warm");
      // The relay is a host process (runc) or the runtime's exec carrying it (runsc): seen here,
      // so the check that none is left after close can fail.
      assert.ok(relays().length > 0, "a relay runs beside the instance");
    });

    it(`probe-oci-${runtime}: has its loopback and no other network, not even to the gateway`, async () => {
      const res = await request(`${s.url}/invoke/probe-oci-${runtime}/?port=${new URL(s.url).port}`);
      assert.equal(res.status, 200, res.text);
      assertNoNetwork(res.text);
    });
  }
});

for (const runtime of ["runc", "runsc"] as const) {
  describe(`a port that never answers (oci, ${runtime})`, () => {
    const driver = new OciDriver();
    after(() => driver.close());

    it("times the start out and leaves no relay behind", async () => {
      const config = testConfig({
        id: { user: "default", name: `silent-${runtime}` },
        key: `default/silent-${runtime}`,
        dir: join(ROOT, "test", "fixtures", "port"),
        sandbox: {
          kind: "oci",
          // Runs, listens nowhere (and takes no offence at the `ignore` after it).
          command: [process.execPath, "-e", "setInterval(() => {}, 60_000)"],
          handler: undefined,
          runtime,
          env: {},
          memoryMiB: 256,
          pids: 1024,
          rootfs: "shared",
          port: 8080,
        },
      });
      // Long enough for the relay to be running (a runsc sandbox takes seconds to come up).
      await assert.rejects(startInstance(driver, config, { startTimeoutMs: 15_000 }), (err: unknown) => {
        assert.ok(err instanceof FennecError);
        assert.equal(err.code, "FN_INIT_TIMEOUT", err.message);
        return true;
      });
      // The caller is answered at the deadline; the driver's cleanup (the relay with it) follows.
      await waitFor("the relay to be gone", () => relays().length === 0);
    });
  });
}

// A dockerd of the test's own (test/helpers/docker.ts), and images shaped as UniFaaS's
// benchmarks/docker-node/Dockerfile makes them: Node, the app, ENTRYPOINT ["node", "/root/main.js"].
describe("UniFaaS's app as a [container] image serving port 8080 with no network", () => {
  let dockerd: TestDockerd;
  let s: TestServer;
  before(async () => {
    dockerd = await startDockerd();
    const image = async (ref: string, file: string, target: string) => {
      const rootfs = await assembleRootfs(join(dockerd.dir, `rootfs-${file}`), {
        binaries: [process.execPath],
        files: [{ source: file, target }],
      });
      await dockerd.engine.importRootfs(rootfs.dir, ref, rootfs.digest, [await nodeInside(), target]);
      await rm(rootfs.dir, { recursive: true, force: true });
    };
    await image("fennec-test/unifaas-node:1", APP, "/root/main.js");
    await image("fennec-test/port-probe:1", PROBE, "/root/probe.mjs");
    s = await startTestServer({ driverSettings: { "docker-host": dockerd.socketPath } });
    for (const runtime of ["runc", "runsc"]) {
      const table = (image: string) =>
        `keepalive = 30\nconcurrent-requests = 1\n[container]\nimage = "${image}"\nmemory = 256\nruntime = "${runtime}"\nport = 8080\n`;
      for (const [name, ref] of [
        [`docker-${runtime}`, "fennec-test/unifaas-node:1"],
        [`probe-docker-${runtime}`, "fennec-test/port-probe:1"],
      ] as const) {
        await mkdir(join(s.registry, name));
        await writeFile(join(s.registry, name, "function.toml"), table(ref));
      }
    }
  });
  after(async () => {
    await s?.close();
    await dockerd?.stop();
    assert.deepEqual(relays(), [], "no relay outlives its instance");
  });

  for (const runtime of ["runc", "runsc"]) {
    it(`docker-${runtime}: answers through the relay, cold then warm`, async () => {
      const cold = await request(`${s.url}/invoke/docker-${runtime}/`);
      assert.equal(cold.status, 200, cold.text);
      assert.equal(cold.text, HELLO);
      assert.equal(cold.headers.get("x-fennec-start"), "cold");
      const warm = await request(`${s.url}/invoke/docker-${runtime}/again`);
      assert.equal(warm.text, HELLO);
      assert.equal(warm.headers.get("x-fennec-start"), "warm");
      // Under runc the relay is a host process; under gVisor it lives in the sandbox, unseen here.
      if (runtime === "runc") assert.ok(relays().length > 0, "a relay runs beside the instance");
    });

    it(`probe-docker-${runtime}: has its loopback and no other network, not even to the gateway`, async () => {
      const res = await request(`${s.url}/invoke/probe-docker-${runtime}/?port=${new URL(s.url).port}`);
      assert.equal(res.status, 200, res.text);
      assertNoNetwork(res.text);
    });
  }
});
