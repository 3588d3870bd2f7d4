import assert from "node:assert/strict";
import { mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { errorCode, request } from "../helpers/http.js";
import { EXAMPLES } from "../helpers/paths.js";
import { startTestServer, type TestServer } from "../helpers/server.js";

const TOKEN = "s3cret-token";
const auth = { authorization: `Bearer ${TOKEN}` };
const authJson = { ...auth, "content-type": "application/json" };

interface Row {
  key: string;
  state: string;
  sandbox: string | null;
  error: { code: string; message: string } | null;
}

describe("admin API /system/functions", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({ token: TOKEN });
    // A broken function next to the good ones: listed with its error, never hiding the others.
    await mkdir(join(s.registry, "broken"));
    await writeFile(
      join(s.registry, "broken", "function.toml"),
      "keepalive = 1\nconcurrent-requests = 1\ncolour = 'red'\n[wasm]\nmodule = 'x.wasm'\n",
    );
  });
  after(() => s.close());

  it("needs the bearer token when one is set", async () => {
    assert.equal((await request(`${s.url}/system/functions`)).status, 401);
    assert.equal(
      (await request(`${s.url}/system/functions`, { headers: { authorization: "Bearer wrong" } })).status,
      401,
    );
    const upload = { method: "PUT", body: "x", headers: { "content-type": "application/wasm" } };
    assert.equal(errorCode(await request(`${s.url}/f/x/y`, upload)), "UNAUTHORIZED");
    // Invocation routes stay open.
    assert.equal((await request(`${s.url}/invoke/hello/`)).status, 200);
    // Replaying and deleting async calls are admin routes, guarded before the call is looked up.
    const id = "00000000-0000-0000-0000-000000000000";
    assert.equal(
      errorCode(await request(`${s.url}/system/calls/${id}/replay`, { method: "POST" })),
      "UNAUTHORIZED",
    );
    assert.equal(
      errorCode(await request(`${s.url}/system/calls/${id}`, { method: "DELETE" })),
      "UNAUTHORIZED",
    );
    const auth = { authorization: `Bearer ${TOKEN}` };
    const crossSite = await request(`${s.url}/system/calls/${id}/replay`, {
      method: "POST",
      headers: { ...auth, "sec-fetch-site": "cross-site" },
    });
    assert.equal(errorCode(crossSite), "CROSS_SITE_REFUSED");
    const unknown = await request(`${s.url}/system/calls/${id}`, { method: "DELETE", headers: auth });
    assert.equal(errorCode(unknown), "CALL_NOT_FOUND");
  });

  it("lists every function with its state, and a broken one with its error", async () => {
    const rows = (await request(`${s.url}/system/functions`, { headers: auth })).json<Row[]>();
    const byKey = new Map(rows.map((r) => [r.key, r]));
    assert.equal(byKey.get("default/hello")?.state, "ready");
    assert.equal(byKey.get("default/hello")?.sandbox, "wasm");
    const broken = byKey.get("default/broken");
    assert.equal(broken?.state, "error");
    assert.equal(broken?.error?.code, "CONFIG_INVALID");
    assert.match(broken?.error?.message ?? "", /function\.toml.*key "colour": unknown key/);
    const one = await request(`${s.url}/system/functions/hello`, { headers: auth });
    assert.equal(one.json<Row>().key, "default/hello");
  });

  it("deploys a function from JSON, validating before writing", async () => {
    const module = (await readFile(join(EXAMPLES, "echo", "echo.wasm"))).toString("base64");
    const toml = 'keepalive = 5\nconcurrent-requests = 2\n[wasm]\nmodule = "main.wasm"\nmemory = 16\n';
    const r = await request(`${s.url}/system/functions`, {
      method: "POST",
      headers: authJson,
      body: JSON.stringify({ name: "copy", user: "carol", toml, module }),
    });
    assert.equal(r.status, 201, r.text);
    assert.equal(
      (await request(`${s.url}/f/carol/copy`, { method: "POST", body: "deployed" })).text,
      "deployed",
    );

    const bad = await request(`${s.url}/system/functions`, {
      method: "POST",
      headers: authJson,
      body: JSON.stringify({
        name: "nope",
        toml: toml.replace("concurrent-requests = 2", 'concurrent-requests = "two"'),
        module,
      }),
    });
    assert.equal(bad.status, 422);
    assert.equal(errorCode(bad), "CONFIG_INVALID");
    assert.match(bad.text, /concurrent-requests/);
    await assert.rejects(stat(join(s.registry, "nope")), "nothing written for a refused deploy");

    const badModule = await request(`${s.url}/system/functions`, {
      method: "PUT",
      headers: authJson,
      body: JSON.stringify({ name: "nope", toml, module: Buffer.from("not wasm").toString("base64") }),
    });
    assert.equal(errorCode(badModule), "MODULE_INVALID");
    assert.equal(
      errorCode(
        await request(`${s.url}/system/functions`, { method: "POST", headers: authJson, body: "{oops" }),
      ),
      "BAD_REQUEST",
    );
  });

  it("deletes a function: its instances stop and it is gone from disk", async () => {
    assert.equal((await request(`${s.url}/f/carol/copy`, { method: "POST", body: "x" })).status, 200);
    const del = await request(`${s.url}/system/functions`, {
      method: "DELETE",
      headers: authJson,
      body: JSON.stringify({ functionName: "carol/copy" }),
    });
    assert.equal(del.status, 202);
    assert.equal(
      errorCode(await request(`${s.url}/f/carol/copy`, { method: "POST", body: "x" })),
      "FUNCTION_NOT_FOUND",
    );
    await assert.rejects(stat(join(s.registry, "@carol", "copy")));
    assert.equal(
      errorCode(await request(`${s.url}/system/functions/ghost`, { method: "DELETE", headers: auth })),
      "FUNCTION_NOT_FOUND",
    );
  });
});
