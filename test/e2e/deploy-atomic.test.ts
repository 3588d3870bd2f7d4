import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { cp, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { startFennec, type Fennec } from "../../src/main.js";
import { errorCode, request, type Reply } from "../helpers/http.js";
import { EXAMPLES, ROOT, tempDir, WASM_FIXTURES } from "../helpers/paths.js";

const JSON_TYPE = { "content-type": "application/json" };
const WASM_TYPE = { "content-type": "application/wasm" };
const b64 = (bytes: Uint8Array | string) => Buffer.from(bytes).toString("base64");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Every path under `dir` with a digest of its content: equal snapshots mean byte-for-byte equal trees. */
async function snapshot(
  dir: string,
  into = new Map<string, string>(),
  prefix = "",
): Promise<Map<string, string>> {
  for (const item of await readdir(dir, { withFileTypes: true })) {
    // Fennec's build caches may be filled in the background; they are not the function.
    if (item.name === ".fennec") continue;
    const full = join(dir, item.name);
    const shown = `${prefix}${item.name}`;
    if (item.isDirectory()) {
      into.set(shown, "dir");
      await snapshot(full, into, `${shown}/`);
    } else if (item.isSymbolicLink()) {
      into.set(shown, `link:${await readlink(full)}`);
    } else {
      into.set(
        shown,
        createHash("sha256")
          .update(await readFile(full))
          .digest("hex"),
      );
    }
  }
  return into;
}

/** Polls `holds` until it is true, failing only after a generous deadline. */
async function until(holds: () => Promise<boolean>, what: string): Promise<void> {
  const end = performance.now() + 30_000;
  while (!(await holds())) {
    if (performance.now() > end) assert.fail(`timed out waiting: ${what}`);
    await sleep(50);
  }
}

const exists = (path: string) =>
  stat(path).then(
    () => true,
    () => false,
  );

/** Names in `dir` that Fennec gives its scratch, swapped-out and retired directories. */
async function debris(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => n.startsWith(".fennec-"));
}

/** Polls `probe` until `done` holds, failing only after a generous deadline. */
async function eventually(
  probe: () => Promise<Reply>,
  done: (r: Reply) => boolean,
  what: string,
): Promise<Reply> {
  const end = performance.now() + 30_000;
  for (;;) {
    const r = await probe();
    if (done(r)) return r;
    if (performance.now() > end) assert.fail(`timed out waiting: ${what} (last: ${r.status} ${r.text})`);
    await sleep(50);
  }
}

describe("deploys: all or nothing, separate namespaces, honest errors", () => {
  let fennec: Fennec;
  let root: string;
  let registry: string;
  let cleanup: () => Promise<void>;
  let echo: Buffer<ArrayBuffer>;
  let hello: Buffer<ArrayBuffer>;
  const deploy = (method: string, path: string, doc: Record<string, unknown>) =>
    request(`${fennec.url}${path}`, { method, headers: JSON_TYPE, body: JSON.stringify(doc) });
  const call = (path: string, body = "ping") => request(`${fennec.url}${path}`, { method: "POST", body });
  const atomToml = 'keepalive = 600\nconcurrent-requests = 2\n[wasm]\nmodule = "main.wasm"\nmemory = 16\n';

  before(async () => {
    ({ dir: root, cleanup } = await tempDir());
    registry = join(root, "registry");
    await mkdir(registry);
    await cp(join(EXAMPLES, "hello"), join(registry, "hello"), { recursive: true });
    fennec = await startFennec({ registry, port: 0, logLevel: "silent", cacheDir: join(root, "cache") });
    echo = await readFile(join(EXAMPLES, "echo", "echo.wasm"));
    hello = await readFile(join(EXAMPLES, "hello", "hello.wasm"));
    const r = await deploy("POST", "/system/functions", {
      name: "atom",
      toml: atomToml,
      module: b64(echo),
      files: { "data.txt": b64("v1") },
    });
    assert.equal(r.status, 201, r.text);
  });
  after(async () => {
    await fennec.close(2000);
    await cleanup();
  });

  it("refuses, at deploy time, a function whose sandbox kind this node does not run, writing nothing", async () => {
    const before = await snapshot(registry);
    const processToml = 'keepalive = 1\nconcurrent-requests = 1\n[process]\ncommand = ["sh", "-c", "id"]\n';
    for (const [method, path] of [
      ["POST", "/system/functions"],
      ["PUT", "/system/functions/atom"],
    ] as const) {
      const r = await deploy(method, path, { name: "proc", toml: processToml });
      assert.equal(r.status, 409, r.text);
      assert.equal(errorCode(r), "DRIVER_UNAVAILABLE");
      assert.match(r.json<{ error: { message: string } }>().error.message, /"process".*--process/);
    }
    assert.deepEqual(await snapshot(registry), before);
    assert.equal((await call("/invoke/atom/", "still here")).text, "still here");
  });

  it("leaves the live function byte-for-byte unchanged, and nothing behind, when a deploy is refused", async () => {
    const before = await snapshot(registry);
    const forbidden = await readFile(join(WASM_FIXTURES, "forbidden-import.wasm"));
    const refused: Array<[string, Record<string, unknown>, string]> = [
      ["a module that is not wasm", { toml: atomToml, module: b64("junk") }, "MODULE_INVALID"],
      [
        "a module the sandbox refuses",
        { toml: atomToml, files: { "main.wasm": b64(forbidden) } },
        "MODULE_INVALID",
      ],
      [
        "a bad function.toml next to a junk module",
        { toml: atomToml.replace("= 2", '= "two"'), files: { "main.wasm": b64("junk") } },
        "CONFIG_INVALID",
      ],
      [
        "a module file that is not there (while other files would replace the live ones)",
        {
          toml: atomToml.replace("main.wasm", "missing.wasm"),
          files: { "main.wasm": b64("junk"), "data.txt": b64("v2") },
        },
        "CONFIG_INVALID",
      ],
      [
        "a bad file name",
        { toml: atomToml, files: { "../escape": b64("x"), "data.txt": b64("v2") } },
        "BAD_NAME",
      ],
    ];
    for (const [what, doc, code] of refused) {
      const r = await deploy("PUT", "/system/functions/atom", doc);
      assert.equal(errorCode(r), code, `${what}: ${r.text}`);
      assert.deepEqual(await snapshot(registry), before, `${what}: the registry changed`);
      assert.equal((await call("/invoke/atom/", what)).text, what, `${what}: the live function broke`);
    }
    // A refused upload (PUT /f/) of a new user's function leaves no directory either.
    const up = await request(`${fennec.url}/f/zed/fn`, { method: "PUT", headers: WASM_TYPE, body: "junk" });
    assert.equal(errorCode(up), "MODULE_INVALID");
    assert.deepEqual(await snapshot(registry), before);
  });

  it("swaps an accepted deploy or upload in whole, keeping files it does not replace", async () => {
    const r = await deploy("PUT", "/system/functions/atom", {
      toml: atomToml.replace("keepalive = 600", "keepalive = 300"),
      files: { "data.txt": b64("v2") },
    });
    assert.equal(r.status, 200, r.text);
    const dir = join(registry, "atom");
    assert.equal(await readFile(join(dir, "data.txt"), "utf8"), "v2");
    assert.deepEqual(await readFile(join(dir, "main.wasm")), echo);
    assert.equal((await call("/invoke/atom/", "redeployed")).text, "redeployed");
    // An upload keeps the function.toml and replaces its module, checked under its own limits.
    const up = await request(`${fennec.url}/f/default/atom`, {
      method: "PUT",
      headers: WASM_TYPE,
      body: hello,
    });
    assert.equal(up.status, 200, up.text);
    assert.deepEqual(await readFile(join(dir, "main.wasm")), hello);
    assert.match(await readFile(join(dir, "function.toml"), "utf8"), /keepalive = 300/);
    assert.match((await call("/invoke/atom/")).text, /hello/i);
    // The replaced directories go once the instances of their revisions have retired.
    await until(async () => (await debris(registry)).length === 0, "replaced directories removed");
  });

  it("keeps users' namespaces apart from default functions' directories", async () => {
    const helloDir = await snapshot(join(registry, "hello"));
    const up = await request(`${fennec.url}/f/hello/src`, { method: "PUT", headers: WASM_TYPE, body: echo });
    assert.equal(up.status, 200, up.text);
    assert.deepEqual(await snapshot(join(registry, "hello")), helloDir, "function hello's directory changed");
    await stat(join(registry, "@hello", "src", "function.toml"));
    assert.equal((await call("/f/hello/src", "user hello")).text, "user hello");
    assert.match((await call("/invoke/hello/")).text, /hello/i);

    // Deleting function `alice` of the default user leaves user alice's functions alone.
    const alice = await deploy("POST", "/system/functions", {
      name: "alice",
      toml: atomToml,
      module: b64(echo),
    });
    assert.equal(alice.status, 201, alice.text);
    const x = await request(`${fennec.url}/f/alice/x`, { method: "PUT", headers: WASM_TYPE, body: echo });
    assert.equal(x.status, 200, x.text);
    assert.equal((await request(`${fennec.url}/system/functions/alice`, { method: "DELETE" })).status, 202);
    assert.equal(errorCode(await call("/invoke/alice/")), "FUNCTION_NOT_FOUND");
    assert.equal((await call("/f/alice/x", "user alice")).text, "user alice");
    await stat(join(registry, "@alice", "x", "function.toml"));
  });

  it("sees an edit or a delete on disk though the function's warm instance has free slots", async () => {
    const dir = join(registry, "warm");
    await mkdir(dir);
    await cp(join(WASM_FIXTURES, "env.wasm"), join(dir, "env.wasm"));
    const toml = 'keepalive = 600\nconcurrent-requests = 4\n[wasm]\nmodule = "env.wasm"\nmemory = 16\n';
    await writeFile(join(dir, "function.toml"), toml);
    assert.ok(!(await call("/invoke/warm/")).text.includes("GREETING=hi"));
    await writeFile(
      join(dir, "function.toml"),
      toml.replace("memory = 16", 'memory = 16\nenv = { GREETING = "hi" }'),
    );
    await eventually(
      () => call("/invoke/warm/"),
      (r) => r.text.includes("GREETING=hi"),
      "the edit applied",
    );
    await rm(dir, { recursive: true });
    await eventually(
      () => call("/invoke/warm/"),
      (r) => errorCode(r) === "FUNCTION_NOT_FOUND",
      "the deleted function stopped serving",
    );
    assert.equal(fennec.scheduler.pools().has("default/warm"), false, "its instances were stopped");
  });

  it("names paths relative to the registry in errors, and says the same for any path outside", async () => {
    const up = "../".repeat(root.split("/").length + 2);
    const outside = async (module: string) => {
      const r = await deploy("POST", "/system/functions", {
        name: "peek",
        toml: atomToml.replace("main.wasm", module),
      });
      assert.equal(errorCode(r), "CONFIG_INVALID", r.text);
      assert.ok(!r.text.includes(root), r.text);
      return r.json<{ error: { message: string } }>().error.message.replace(JSON.stringify(module), "PATH");
    };
    const existing = await outside(`${up}etc/passwd`);
    assert.match(
      existing,
      /^peek\/function\.toml: key "wasm\.module": PATH leads outside the function directory$/,
    );
    assert.equal(await outside(`${up}etc/no-such-file-${process.pid}`), existing);
    assert.equal(await outside(`${up}no-such-dir-${process.pid}/x`), existing);
    await assert.rejects(stat(join(registry, "peek")), "nothing written for a refused deploy");

    // A function broken on disk: listed and invoked with errors that name no host path.
    await mkdir(join(registry, "@bob", "broken"), { recursive: true });
    await writeFile(
      join(registry, "@bob", "broken", "function.toml"),
      atomToml.replace("main.wasm", "gone.wasm"),
    );
    const rows = (await request(`${fennec.url}/system/functions`)).json<
      Array<{ key: string; error: { message: string } | null }>
    >();
    const broken = rows.find((row) => row.key === "bob/broken");
    assert.match(
      broken?.error?.message ?? "",
      /^@bob\/broken\/function\.toml: key "wasm\.module": file not found/,
    );
    const invoked = await call("/f/bob/broken");
    assert.equal(errorCode(invoked), "FN_CONFIG_INVALID");
    assert.ok(!invoked.text.includes(root), invoked.text);
  });
});

describe("a redeploy or delete while a [process] instance is mid-request", () => {
  let fennec: Fennec;
  let root: string;
  let registry: string;
  let cleanup: () => Promise<void>;

  before(async () => {
    ({ dir: root, cleanup } = await tempDir());
    registry = join(root, "registry");
    await mkdir(registry);
    fennec = await startFennec({
      registry,
      port: 0,
      logLevel: "silent",
      cacheDir: join(root, "cache"),
      driverSettings: { process: true },
    });
  });
  after(async () => {
    await fennec.close(2000);
    await cleanup();
  });

  it("lets the call finish with the files of the version it started on, then removes them", async () => {
    const server = await readFile(join(ROOT, "test", "fixtures", "process", "server.mjs"));
    // The fixture reads data.txt from its working directory, the function directory it started in.
    const toml = `keepalive = 600\nconcurrent-requests = 1\ntimeout = 300\n[process]\ncommand = [${JSON.stringify(process.execPath)}, "server.mjs", "read-later"]\n`;
    const deploy = (method: string, path: string, data: string) =>
      request(`${fennec.url}${path}`, {
        method,
        headers: JSON_TYPE,
        body: JSON.stringify({
          name: "slow",
          toml,
          files: { "server.mjs": b64(server), "data.txt": b64(data) },
        }),
      });
    const first = await deploy("POST", "/system/functions", "v1");
    assert.equal(first.status, 201, first.text);

    const changes: Array<[string, string, () => Promise<Reply>, () => Promise<boolean>]> = [
      // A redeploy answers once the new version is in place.
      ["redeploy", "v1", () => deploy("PUT", "/system/functions/slow", "v2"), async () => true],
      // A delete answers once the function's instances have stopped, so the call goes on once
      // the function's directory has left its place.
      [
        "delete",
        "v2",
        () => request(`${fennec.url}/system/functions/slow`, { method: "DELETE" }),
        async () => !(await exists(join(registry, "slow"))),
      ],
    ];
    for (const [what, version, change, applied] of changes) {
      const markers = await mkdtemp(join(root, "markers-"));
      const inflight = request(`${fennec.url}/invoke/slow/?dir=${encodeURIComponent(markers)}`);
      await until(() => exists(join(markers, "started")), `${what}: the call reached the instance`);
      const changed = change();
      await until(applied, `${what}: applied`);
      if (what === "redeploy") assert.equal((await changed).status, 200);
      await writeFile(join(markers, "go"), "");
      const r = await inflight;
      assert.equal(r.status, 200, `${what}: ${r.text}`);
      assert.equal(r.text, version, `${what}: the call read the files of the version it started on`);
      assert.ok([200, 202].includes((await changed).status));
      await until(
        async () => (await debris(registry)).length === 0,
        `${what}: the replaced directory is removed once its instance stopped`,
      );
    }
    assert.equal(errorCode(await request(`${fennec.url}/invoke/slow/`)), "FUNCTION_NOT_FOUND");
  });
});

describe("start-up over a deploy's swap that a crash interrupted", () => {
  it("serves the previous version where the new one never arrived, the new one where it did", async () => {
    const { dir: root, cleanup } = await tempDir();
    try {
      const registry = join(root, "registry");
      // Function echo: the crash came after its live directory was renamed away (its new version,
      // hello's module, still in the scratch directory). User alice's fn: after the new version
      // (hello) was renamed in, before the old one (echo) was renamed to trash.
      await cp(join(EXAMPLES, "echo"), join(registry, ".fennec-old-echo-0123456789ab"), { recursive: true });
      await cp(join(EXAMPLES, "hello"), join(registry, ".fennec-tmp-deploy-aaaaaaaaaaaa"), {
        recursive: true,
      });
      await cp(join(EXAMPLES, "echo"), join(registry, "@alice", ".fennec-old-fn-ba9876543210"), {
        recursive: true,
      });
      await cp(join(EXAMPLES, "hello"), join(registry, "@alice", "fn"), { recursive: true });
      const fennec = await startFennec({
        registry,
        port: 0,
        logLevel: "silent",
        cacheDir: join(root, "cache"),
      });
      try {
        const echoed = await request(`${fennec.url}/invoke/echo/`, { method: "POST", body: "previous" });
        assert.equal(echoed.text, "previous");
        assert.match(
          (await request(`${fennec.url}/f/alice/fn`, { method: "POST", body: "x" })).text,
          /hello/i,
        );
        assert.deepEqual(await debris(registry), []);
        assert.deepEqual(await readdir(join(registry, "@alice")), ["fn"]);
      } finally {
        await fennec.close();
      }
    } finally {
      await cleanup();
    }
  });
});
