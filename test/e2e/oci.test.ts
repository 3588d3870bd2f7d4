import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { request } from "../helpers/http.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

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
