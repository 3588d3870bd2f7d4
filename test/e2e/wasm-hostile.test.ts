import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { errorCode, request } from "../helpers/http.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { wagiModule } from "../helpers/wasm-writer.js";

const MIB = 2 ** 20;

async function upload(s: TestServer, path: string, module: Uint8Array) {
  return request(`${s.url}/f/${path}`, {
    method: "PUT",
    headers: { "content-type": "application/wasm" },
    body: module as Uint8Array<ArrayBuffer>,
  });
}

describe("wasm sandbox: real-size modules", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer();
  });
  after(() => s.close());

  it("uploads and runs a valid WASI program with a data section above 1 MiB", async () => {
    const module = wagiModule({ output: "Content-Type: text/plain\n\nbig one ok", fillerBytes: 1.5 * MIB });
    const up = await upload(s, "alice/big", module);
    assert.equal(up.status, 200, up.text);
    const res = await request(`${s.url}/f/alice/big`, { method: "POST" });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.text, "big one ok");
  });

  it("uploads and runs a 30 MiB module", async () => {
    const module = wagiModule({ output: "Content-Type: text/plain\n\nhuge one ok", fillerBytes: 30 * MIB });
    assert.ok(module.byteLength > 30 * MIB);
    const up = await upload(s, "alice/huge", module);
    assert.equal(up.status, 200, up.text);
    const res = await request(`${s.url}/f/alice/huge`, { method: "POST" });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.text, "huge one ok");
  });

  it("still refuses a large module that is not valid WebAssembly", async () => {
    const module = wagiModule({ output: "x", fillerBytes: 2 * MIB });
    const broken = Buffer.from(module.subarray(0, module.byteLength - 100));
    const up = await upload(s, "alice/broken", broken);
    assert.equal(up.status, 422, up.text);
    assert.equal(errorCode(up), "MODULE_INVALID");
  });
});
