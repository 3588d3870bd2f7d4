import assert from "node:assert/strict";
import { copyFile, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { request } from "../helpers/http.js";
import { ROOT } from "../helpers/paths.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

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
