import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { errorCode, request, type Reply } from "../helpers/http.js";
import { addWasmFunction, startTestServer, type TestServer } from "../helpers/server.js";
import { waitFor } from "../helpers/wait.js";

interface Row {
  key: string;
  state: string;
  error: { code: string; message: string } | null;
}

describe("bad input: broken and hostile functions never take the platform down", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer();
    // The runaways' timeout is long enough that "hello answered while they ran" holds on a busy machine.
    await addWasmFunction(s.registry, "loop", "loop.wasm", "timeout = 10\nmax-instances = 8");
    await addWasmFunction(s.registry, "membomb", "membomb.wasm", "", 32);
    await addWasmFunction(s.registry, "trap", "trap.wasm");
    await addWasmFunction(s.registry, "exit3", "exit3.wasm");
    await addWasmFunction(s.registry, "forbidden", "forbidden-import.wasm");
    await addWasmFunction(s.registry, "notwasm", "not-wasm.wasm");
    await addWasmFunction(s.registry, "bigmem", "bigmem.wasm", "", 16);
    await addWasmFunction(s.registry, "nofs", "cat.wasm");
    await addWasmFunction(s.registry, "withfs", "cat.wasm");
    await mkdir(join(s.registry, "withfs", "static"));
    await writeFile(join(s.registry, "withfs", "static", "note.txt"), "granted file\n");
    await writeFile(
      join(s.registry, "withfs", "function.toml"),
      'keepalive = 30\nconcurrent-requests = 1\n[wasm]\nmodule = "cat.wasm"\ndirs = { "/data" = "static" }\n',
    );
    const broken: Record<string, string> = {
      malformed: "keepalive = = 1",
      unknownkey: 'keepalive = 1\nconcurrent-requests = 1\nturbo = true\n[wasm]\nmodule = "m.wasm"\n',
      wrongtype: 'keepalive = "soon"\nconcurrent-requests = 1\n[wasm]\nmodule = "m.wasm"\n',
      nomodule: 'keepalive = 1\nconcurrent-requests = 1\n[wasm]\nmodule = "missing.wasm"\n',
    };
    for (const [name, toml] of Object.entries(broken)) {
      await mkdir(join(s.registry, name));
      await writeFile(join(s.registry, name, "function.toml"), toml);
    }
  });
  after(() => s.close());

  const call = (fn: string, body = "x") => request(`${s.url}/invoke/${fn}/`, { method: "POST", body });
  /** Resolves once `n` calls of the loop function are running. */
  const loopsRunning = (n: number) =>
    waitFor(`${n} runaway call(s) to be running`, async () => {
      const stats = (await request(`${s.url}/stats`)).json<{ instances: Record<string, { busy: number }> }>();
      return (stats.instances["default/loop"]?.busy ?? 0) >= n;
    });
  /** A call and whether it has settled yet. */
  const tracked = (p: Promise<Reply>) => {
    const t = { settled: false, reply: p };
    const settle = () => (t.settled = true);
    // Settling either way; a failed call is reported where its reply is awaited.
    p.then(settle, settle);
    return t;
  };

  it("stops an infinite loop at its timeout without stalling other functions", async () => {
    const looping = tracked(call("loop"));
    await loopsRunning(1);
    const hello = await call("hello");
    assert.equal(hello.status, 200);
    assert.ok(!looping.settled, "hello answered while loop ran");
    const r = await looping.reply;
    assert.equal(r.status, 504);
    assert.equal(errorCode(r), "FN_TIMEOUT");
    assert.equal((await call("loop")).status, 504, "a new instance replaces the killed one");
  });

  it("keeps serving while more runaways run than there are idle executors", async () => {
    const loops = [1, 2, 3, 4].map(() => tracked(call("loop")));
    await loopsRunning(4);
    const hello = await call("hello");
    assert.equal(hello.status, 200);
    assert.ok(
      loops.every((l) => !l.settled),
      "hello answered while four loops ran",
    );
    for (const r of await Promise.all(loops.map((l) => l.reply))) assert.equal(errorCode(r), "FN_TIMEOUT");
  });

  it("reports a memory bomb as FN_OOM, capped at the function's memory", async () => {
    const r = await call("membomb");
    assert.equal(r.status, 502);
    assert.equal(errorCode(r), "FN_OOM", r.text);
  });

  it("reports a trap as FN_TRAP and a non-zero exit as FN_EXIT with stderr", async () => {
    const t = await call("trap");
    assert.equal(errorCode(t), "FN_TRAP");
    assert.match(t.text, /unreachable/);
    const e = await call("exit3");
    assert.equal(e.status, 502);
    assert.equal(errorCode(e), "FN_EXIT");
    assert.match(e.text, /exited with code 3.*something went wrong/);
  });

  it("refuses modules that import what the sandbox does not grant, that are not wasm, or that need too much memory", async () => {
    const f = await call("forbidden");
    assert.equal(errorCode(f), "FN_BAD_MODULE");
    assert.match(f.text, /env\.open_socket/);
    assert.equal(errorCode(await call("notwasm")), "FN_BAD_MODULE");
    const big = await call("bigmem");
    assert.equal(errorCode(big), "FN_BAD_MODULE");
    assert.match(big.text, /64 MiB of initial memory.*16 MiB/);
  });

  it("grants no filesystem unless the config does, and then only read-only", async () => {
    const denied = await request(`${s.url}/invoke/nofs/?/data/note.txt`);
    assert.equal(denied.status, 404, denied.text);
    const granted = await request(`${s.url}/invoke/withfs/?/data/note.txt`);
    assert.equal(granted.status, 200, granted.text);
    assert.equal(granted.text, "granted file\n");
    const outside = await request(`${s.url}/invoke/withfs/?/data/../../etc/hostname`);
    assert.equal(outside.status, 404, outside.text);
  });

  it("lists broken configs with the file, key and expectation, and serves every other function", async () => {
    const rows = new Map((await request(`${s.url}/system/functions`)).json<Row[]>().map((r) => [r.key, r]));
    assert.match(rows.get("default/malformed")?.error?.message ?? "", /malformed TOML at line 1/);
    assert.match(rows.get("default/unknownkey")?.error?.message ?? "", /key "turbo": unknown key/);
    assert.match(rows.get("default/wrongtype")?.error?.message ?? "", /key "keepalive": .*expected/i);
    assert.match(rows.get("default/nomodule")?.error?.message ?? "", /key "wasm\.module": file not found/);
    for (const name of ["malformed", "unknownkey", "wrongtype", "nomodule"]) {
      assert.equal(rows.get(`default/${name}`)?.state, "error");
      const r = await call(name);
      assert.equal(r.status, 500);
      assert.equal(errorCode(r), "FN_CONFIG_INVALID");
    }
    // Bad modules show up in the listing once Fennec has tried them.
    assert.equal(rows.get("default/notwasm")?.error?.code, "FN_BAD_MODULE");
    assert.equal((await call("echo", "alive")).text, "alive");
  });
});
