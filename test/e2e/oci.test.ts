import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import { OciDriver } from "../../src/sandbox/drivers/oci/driver.js";
import { ociFixtureConfig } from "../helpers/config.js";
import { request } from "../helpers/http.js";
import { emptyGet, startInstance } from "../helpers/instance.js";
import { ROOT, tempDir } from "../helpers/paths.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { assertLeastPrivileged, type Privileges } from "../helpers/privileges.js";
import { bytesOf } from "../helpers/body.js";

// Needs root, runc and runsc (.ci/run installs them); under CI=true a missing tool fails.
describe("OCI examples through the gateway", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({ startTimeoutMs: 60_000 });
  });
  after(() => s.close());

  for (const runtime of ["runc", "runsc"]) {
    it(`serves hello-${runtime}: the fetch handler in an OCI bundle`, async () => {
      const cold = await request(`${s.url}/invoke/hello-${runtime}/?name=oci`);
      assert.equal(cold.status, 200, cold.text);
      assert.equal(cold.text, `hello from Fennec (an OCI container on ${runtime}), oci!\n`);
      assert.equal(cold.headers.get("x-fennec-start"), "cold");
      const warm = await request(`${s.url}/invoke/hello-${runtime}/`);
      assert.equal(warm.headers.get("x-fennec-start"), "warm");
      assert.match(warm.text, /hello/);
    });
  }

  it("lists them as oci functions", async () => {
    const rows = (await request(`${s.url}/system/functions`)).json<
      Array<{ key: string; sandbox: string; state: string }>
    >();
    for (const runtime of ["runc", "runsc"]) {
      const row = rows.find((r) => r.key === `default/hello-${runtime}`);
      assert.equal(row?.sandbox, "oci");
      assert.equal(row?.state, "ready");
    }
  });
});

/** What the `privileges` probe (test/fixtures/process/server.mjs) reports from inside. */
/** A host Unix socket a function would like Fennec to talk to (as Docker's would be), counting connections. */
async function decoySocket(): Promise<{
  path: string;
  connections: () => number;
  close: () => Promise<void>;
}> {
  const { dir, cleanup } = await tempDir("fennec-decoy-");
  let connections = 0;
  const server = createServer((s) => {
    connections++;
    s.end("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\ndecoy");
  });
  const path = join(dir, "decoy.sock");
  await new Promise<void>((r) => server.listen(path, () => r()));
  return {
    path,
    connections: () => connections,
    close: async () => {
      await new Promise((r) => server.close(r));
      await cleanup();
    },
  };
}

/** /proc/<pid>/status on the host of the process the runtime's `state` names for a container. */
async function hostStatus(runtime: "runc" | "runsc", id: string): Promise<string> {
  const { stdout } = await promisify(execFile)(runtime, [...OciDriver.runtimeArgs(runtime), "state", id]);
  return readFileSync(`/proc/${(JSON.parse(stdout) as { pid: number }).pid}/status`, "utf8");
}

const probeFn = (runtime: "runc" | "runsc", mode = "privileges") =>
  ociFixtureConfig(mode, runtime, { name: `${mode}-${runtime}`, timeoutMs: 20_000 });

for (const runtime of ["runc", "runsc"] as const) {
  describe(`OCI containers are least-privileged (${runtime})`, () => {
    const driver = new OciDriver();
    after(() => driver.close());

    it("run as an unprivileged user with no capabilities, no new privileges and a seccomp filter", async () => {
      const inst = await startInstance(driver, probeFn(runtime), { startTimeoutMs: 30_000 });
      let seen: Privileges;
      let onHost: string;
      try {
        seen = JSON.parse((await bytesOf((await inst.invoke(emptyGet())).body)).toString()) as Privileges;
        onHost = await hostStatus(runtime, inst.id);
      } finally {
        await inst.destroy();
      }
      assertLeastPrivileged(seen, runtime, onHost);
      assert.ok(!existsSync(join(ROOT, "test", "fixtures", "process", "written.txt")));
    });

    it("cannot redirect Fennec's connections by swapping its socket for a symlink", async () => {
      const decoy = await decoySocket();
      const inst = await startInstance(driver, probeFn(runtime, "swap-socket"), { startTimeoutMs: 30_000 });
      try {
        const swapped = await inst.invoke(emptyGet(`target=${encodeURIComponent(decoy.path)}`));
        assert.equal((await bytesOf(swapped.body)).toString(), "swapped");
        const next = await inst.invoke(emptyGet());
        assert.equal((await bytesOf(next.body)).toString(), "served by the function");
        assert.equal(decoy.connections(), 0, "Fennec never connected to the host socket");
      } finally {
        await inst.destroy();
        await decoy.close();
      }
    });
  });
}
