import assert from "node:assert/strict";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { startFennec } from "../../src/main.js";
import { errorCode, request } from "../helpers/http.js";
import { copyExamples, tempDir, WASM_FIXTURES } from "../helpers/paths.js";
import { addWasmFunction, startTestServer, type TestServer } from "../helpers/server.js";

/** The same module with a custom section appended: new bytes (a new hash), the same behaviour. */
async function variant(fixture: string, tag: string): Promise<Buffer> {
  const bytes = await readFile(join(WASM_FIXTURES, fixture));
  const name = Buffer.from(tag);
  const body = Buffer.concat([Buffer.from([name.length]), name]);
  return Buffer.concat([bytes, Buffer.from([0, body.length]), body]);
}

async function upload(s: TestServer, path: string, module: Uint8Array) {
  return request(`${s.url}/f/${path}`, {
    method: "PUT",
    headers: { "content-type": "application/wasm" },
    body: module as Uint8Array<ArrayBuffer>,
  });
}

/** `init-stamp`'s answer: when its snapshot was initialised, and how often that memory was. */
async function stamp(url: string): Promise<{ at: string; initialisations: string }> {
  const res = await request(url, { method: "POST" });
  assert.equal(res.status, 200, res.text);
  const [at, initialisations] = res.text.trim().split(" ");
  return { at: at!, initialisations: initialisations! };
}

describe("wasm pre-initialised snapshots (wizer.initialize)", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer();
  });
  after(() => s.close());

  it("the primes example answers from the table its initialisation built", async () => {
    for (const [k, prime] of [
      ["1", "2"],
      ["10", "29"],
      ["100000", "1299709"],
    ]) {
      const res = await request(`${s.url}/invoke/primes/`, { method: "POST", body: k });
      assert.equal(res.status, 200, res.text);
      assert.equal(res.text.trim(), prime);
      assert.equal(res.headers.get("x-table"), "snapshot", "restored, not built in the call");
      assert.equal(res.headers.get("x-initialised"), "1");
      assert.equal(res.headers.get("x-calls"), "1");
    }
  });

  it("every call starts from the snapshot, not from what the previous call left", async () => {
    const poisoned = await request(`${s.url}/invoke/primes/?k=5&poison=1`);
    assert.equal(poisoned.text.trim(), "11");
    const next = await request(`${s.url}/invoke/primes/?k=5`);
    assert.equal(next.text.trim(), "11", "the table the previous call zeroed is whole again");
    assert.equal(next.headers.get("x-calls"), "1");
  });

  it("initialises once: every call and every instance sees the same initialisation", async () => {
    await addWasmFunction(
      s.registry,
      "stamp",
      "init-stamp.wasm",
      "concurrent-requests = 1\nmax-instances = 4",
    );
    const url = `${s.url}/f/default/stamp`;
    const first = await stamp(url);
    assert.notEqual(first.at, "0", "wizer.initialize ran");
    assert.equal(first.initialisations, "1");
    // Concurrent calls need more instances (one call each): they start from the same snapshot.
    const many = await Promise.all(Array.from({ length: 6 }, () => stamp(url)));
    for (const other of many) assert.deepEqual(other, first);
  });

  it("with pre-initialise = false the module starts from its own initial state", async () => {
    await addWasmFunction(s.registry, "stamp-off", "init-stamp.wasm", "", 32);
    const toml = join(s.registry, "stamp-off", "function.toml");
    await writeFile(toml, `${await readFile(toml, "utf8")}pre-initialise = false\n`);
    assert.deepEqual(await stamp(`${s.url}/f/default/stamp-off`), { at: "0", initialisations: "0" });
  });

  it("a new revision with a new module is initialised again", async () => {
    const up1 = await upload(s, "alice/stamp", await variant("init-stamp.wasm", "one"));
    assert.equal(up1.status, 200, up1.text);
    const one = await stamp(`${s.url}/f/alice/stamp`);
    const up2 = await upload(s, "alice/stamp", await variant("init-stamp.wasm", "two"));
    assert.equal(up2.status, 200, up2.text);
    const two = await stamp(`${s.url}/f/alice/stamp`);
    assert.notEqual(two.at, one.at);
    assert.equal(two.initialisations, "1");
    assert.deepEqual(await stamp(`${s.url}/f/alice/stamp`), two);
  });

  it("a module whose initialisation traps is FN_BAD_MODULE when prepared, and refused at upload", async () => {
    await addWasmFunction(s.registry, "init-trap", "init-trap.wasm");
    const res = await request(`${s.url}/invoke/init-trap/`);
    assert.equal(errorCode(res), "FN_BAD_MODULE", res.text);
    assert.match(res.text, /wizer\.initialize trapped/);
    const up = await upload(s, "alice/init-trap", await readFile(join(WASM_FIXTURES, "init-trap.wasm")));
    assert.equal(up.status, 422, up.text);
    assert.equal(errorCode(up), "MODULE_INVALID");
    assert.match(up.text, /wizer\.initialize trapped/);
    assert.equal((await request(`${s.url}/f/alice/init-trap`, { method: "POST" })).status, 404);
  });

  it("an initialisation that exits non-zero is refused at upload, with what it printed", async () => {
    const up = await upload(s, "alice/init-exit", await readFile(join(WASM_FIXTURES, "init-exit.wasm")));
    assert.equal(up.status, 422, up.text);
    assert.match(up.text, /wizer\.initialize exited with code 3 \(output: no table today\)/);
  });

  it("an initialisation that runs past the function's timeout is FN_BAD_MODULE", async () => {
    await addWasmFunction(s.registry, "init-loop", "init-loop.wasm", "timeout = 0.5");
    const res = await request(`${s.url}/invoke/init-loop/`);
    assert.equal(errorCode(res), "FN_BAD_MODULE", res.text);
    assert.match(res.text, /ran past its bound of 500 ms/);
    // Other functions were served all along; this one still is.
    assert.equal((await request(`${s.url}/invoke/primes/?k=2`)).text.trim(), "3");
  });
});

describe("wasm snapshots on disk", () => {
  it("a restart restores the snapshot from the cache instead of initialising again", async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const registry = await copyExamples(dir);
      await addWasmFunction(registry, "stamp", "init-stamp.wasm");
      const cacheDir = join(dir, "cache");
      const run = async () => {
        const fennec = await startFennec({ registry, port: 0, logLevel: "silent", cacheDir });
        try {
          return await stamp(`${fennec.url}/f/default/stamp`);
        } finally {
          await fennec.close(2000);
        }
      };
      const first = await run();
      assert.ok((await readdir(cacheDir)).some((n) => n.endsWith(".snapshot")));
      assert.deepEqual(await run(), first);
    } finally {
      await cleanup();
    }
  });
});
