import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { cp, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import { Kvm } from "@nats-io/kv";
import { Objm } from "@nats-io/obj";
import { connect } from "@nats-io/transport-node";
import { Header } from "tar";
import { packFunction, readFunctionFiles } from "../../src/cluster/artefact.js";
import { CLUSTER_BUCKETS, type SharedFunction } from "../../src/cluster/contract.js";
import { startCluster, type TestCluster } from "../helpers/cluster.js";
import { errorCode, request } from "../helpers/http.js";
import { CLI, EXAMPLES, tempDir, WASM_FIXTURES } from "../helpers/paths.js";
import { waitFor } from "../helpers/wait.js";

// Functions across nodes (docs/cluster.md): real nats-server, real `fennec serve` processes.
const run = promisify(execFile);
const HELLO = join(EXAMPLES, "hello", "hello.wasm");
const ECHO = join(EXAMPLES, "echo", "echo.wasm");
const HELLO_TEXT = /Hello from Fennec/;

const toml = (module: string) =>
  `keepalive = 30\nconcurrent-requests = 1\n\n[wasm]\nmodule = "${module}"\nmemory = 16\n`;

describe("functions across nodes", () => {
  let c: TestCluster;
  let late: TestCluster | undefined;
  let work: string;
  let cleanup: () => Promise<void>;
  let registry: string;

  before(async () => {
    ({ dir: work, cleanup } = await tempDir());
    // A small registry (one function) keeps each node's start quick on a busy machine.
    registry = join(work, "registry");
    await cp(join(EXAMPLES, "hello"), join(registry, "hello"), { recursive: true });
    c = await startCluster({ nodes: ["n1", "n2"], registry, waitForMembership: false });
  });
  after(async () => {
    await late?.stop();
    await c?.stop();
    await cleanup();
  });

  const admin = (node: string, path: string, init: RequestInit = {}) =>
    request(`${c.url(node)}${path}`, { ...init, headers: { ...c.headers, ...(init.headers ?? {}) } });
  const deploy = async (node: string, name: string, module: string) =>
    admin(node, "/system/functions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        name,
        toml: toml(`${name}.wasm`),
        module: (await readFile(module)).toString("base64"),
      }),
    });
  const invoke = (url: string, name: string, body = "ping") =>
    request(`${url}/invoke/${name}/`, { method: "POST", body });
  /** Waits until `name` answers on `url` with a body that matches. */
  const servedOn = (url: string, name: string, text: RegExp) =>
    waitFor(`${name} to answer ${String(text)} on ${url}`, async () => {
      const r = await invoke(url, name);
      return r.status === 200 && text.test(r.text);
    });
  const goneOn = (url: string, name: string) =>
    waitFor(
      `${name} to be gone on ${url}`,
      async () => errorCode(await invoke(url, name)) === "FUNCTION_NOT_FOUND",
    );

  /** Reads and writes the cluster's buckets directly, as a broken or hostile node could. */
  async function withBuckets<T>(
    work: (kv: Awaited<ReturnType<Kvm["open"]>>, obj: Awaited<ReturnType<Objm["open"]>>) => Promise<T>,
  ): Promise<T> {
    const nc = await connect({ servers: c.nats.url });
    try {
      return await work(
        await new Kvm(nc).open(CLUSTER_BUCKETS.functions),
        await new Objm(nc).open(CLUSTER_BUCKETS.artefacts),
      );
    } finally {
      await nc.close();
    }
  }

  it("a deploy on one node is served by the other; a redeploy replaces it there; a delete removes it there", async () => {
    const first = await deploy("n1", "greet", HELLO);
    assert.equal(first.status, 201, first.text);
    await servedOn(c.url("n2"), "greet", HELLO_TEXT);
    const listed = await admin("n2", "/system/functions/greet");
    assert.equal(listed.status, 200, listed.text);

    // A redeploy on the other node: a new revision everywhere, the old one's instance retires.
    assert.equal((await deploy("n2", "greet", ECHO)).status, 201);
    await servedOn(c.url("n1"), "greet", /^ping$/);
    await servedOn(c.url("n2"), "greet", /^ping$/);

    const removed = await admin("n1", "/system/functions/greet", { method: "DELETE" });
    assert.equal(removed.status, 202, removed.text);
    await goneOn(c.url("n2"), "greet");
    assert.equal((await admin("n2", "/system/functions/greet")).status, 404);
    assert.equal(await withBuckets(async (kv) => (await kv.get("default.greet"))?.operation), "DEL");
  });

  it("a module uploaded with PUT /f/ on one node is served by the other", async () => {
    const put = await request(`${c.url("n2")}/f/alice/up`, {
      method: "PUT",
      headers: { ...c.headers, "content-type": "application/wasm" },
      body: await readFile(ECHO),
    });
    assert.equal(put.status, 200, put.text);
    await waitFor("alice/up on n1", async () => {
      const r = await request(`${c.url("n1")}/f/alice/up`, { method: "POST", body: "uploaded" });
      return r.status === 200 && r.text === "uploaded";
    });
  });

  it("fennec deploy DIR against one node: every node serves it", async () => {
    const dir = join(work, "cli-fn");
    await cp(join(EXAMPLES, "echo"), dir, { recursive: true });
    const { FENNEC_TOKEN: _t, FENNEC_URL: _u, ...env } = process.env;
    await run(
      process.execPath,
      [CLI, "deploy", "bob/clifn", dir, "--url", c.url("n1"), "--token", c.token!],
      {
        env,
      },
    );
    await waitFor("bob/clifn on n2", async () => {
      const r = await request(`${c.url("n2")}/f/bob/clifn`, { method: "POST", body: "from the cli" });
      return r.status === 200 && r.text === "from the cli";
    });
  });

  it("concurrent deploys of one function on two nodes converge on the later one everywhere", async () => {
    const [a, b] = await Promise.all([deploy("n1", "race", HELLO), deploy("n2", "race", ECHO)]);
    assert.equal(a.status, 201, a.text);
    assert.equal(b.status, 201, b.text);
    // Both nodes end up with the deploy the bucket holds, and it is the later of the two.
    const winner = await waitFor("both nodes to serve one revision of race", async () => {
      const [r1, r2] = await Promise.all([invoke(c.url("n1"), "race"), invoke(c.url("n2"), "race")]);
      if (r1.status !== 200 || r1.text !== r2.text) return undefined;
      const entry = await withBuckets((kv) => kv.get("default.race"));
      const shared = entry?.json<SharedFunction>();
      const expected = shared?.deployedBy === "n1" ? HELLO_TEXT : /^ping$/;
      return expected.test(r1.text) ? shared : undefined;
    });
    // Still so a moment later: neither node flips back to its own deploy.
    for (const node of ["n1", "n2"]) {
      const r = await invoke(c.url(node), "race");
      assert.match(r.text, winner.deployedBy === "n1" ? HELLO_TEXT : /^ping$/);
    }
  });

  it("a bad artefact is refused by each node's check; the node keeps its version and serves on", async () => {
    assert.equal((await deploy("n1", "guarded", HELLO)).status, 201);
    await servedOn(c.url("n2"), "guarded", HELLO_TEXT);
    // What a broken node could share: a module that is not wasm, under a valid record and digest.
    const bad = join(work, "bad");
    await mkdir(bad, { recursive: true });
    await writeFile(join(bad, "function.toml"), toml("guarded.wasm"));
    await cp(join(WASM_FIXTURES, "not-wasm.wasm"), join(bad, "guarded.wasm"));
    const files = await readFunctionFiles(bad);
    await withBuckets(async (kv, obj) => {
      const artefact = `default.guarded@${files.revision}`;
      await obj.putBlob({ name: artefact }, packFunction(files));
      const current = await kv.get("default.guarded");
      const record: SharedFunction = {
        function: "default/guarded",
        revision: files.revision,
        artefact,
        deployedBy: "rogue",
        deployedAt: Date.now() + 1000,
      };
      await kv.update("default.guarded", JSON.stringify(record), current!.revision);
    });
    for (const node of ["n1", "n2"]) {
      await waitFor(`${node} to refuse the bad revision`, () =>
        /refused a function shared by another node[^\n]*MODULE_INVALID/.test(c.node(node).log()),
      );
      const r = await invoke(c.url(node), "guarded");
      assert.equal(r.status, 200, r.text);
      assert.match(r.text, HELLO_TEXT);
      assert.match((await invoke(c.url(node), "hello")).text, HELLO_TEXT);
    }

    // A tar whose entry climbs out of the function's directory: refused before anything is written.
    await withBuckets(async (kv, obj) => {
      const revision = "e".repeat(32);
      const artefact = `default.guarded@${revision}`;
      const header = Buffer.alloc(512);
      new Header({ path: "../../escape", mode: 0o644, size: 5, type: "File", mtime: new Date(0) }).encode(
        header,
        0,
      );
      const body = Buffer.alloc(512);
      body.write("owned");
      await obj.putBlob({ name: artefact }, Buffer.concat([header, body, Buffer.alloc(1024)]));
      const current = await kv.get("default.guarded");
      const record: SharedFunction = {
        function: "default/guarded",
        revision,
        artefact,
        deployedBy: "rogue",
        deployedAt: Date.now() + 2000,
      };
      await kv.update("default.guarded", JSON.stringify(record), current!.revision);
    });
    for (const node of ["n1", "n2"]) {
      await waitFor(`${node} to refuse the escaping artefact`, () =>
        /refused a function shared by another node[^\n]*ARTEFACT_INVALID/.test(c.node(node).log()),
      );
      assert.equal(existsSync(join(c.node(node).dir, "escape")), false);
      assert.equal(existsSync(join(c.node(node).registry, "escape")), false);
      assert.match((await invoke(c.url(node), "guarded")).text, HELLO_TEXT);
    }
  });

  it("a node started later catches up before it serves, and seeds the cluster with its own functions", async () => {
    assert.equal((await deploy("n1", "early", ECHO)).status, 201);
    await servedOn(c.url("n2"), "early", /^ping$/);
    const seedRegistry = join(work, "seed-registry");
    await cp(registry, seedRegistry, { recursive: true });
    await cp(join(EXAMPLES, "echo"), join(seedRegistry, "seeded"), { recursive: true });
    // A function deleted in the cluster before this node existed, present in its -r DIR: it seeds.
    await cp(join(EXAMPLES, "echo"), join(seedRegistry, "greet"), { recursive: true });
    late = await startCluster({
      nats: c.nats,
      nodes: [{ name: "n3", registry: seedRegistry }],
      waitForMembership: false,
    });
    const n3 = late.url("n3");
    // Caught up at start: no wait.
    for (const name of ["early", "race"]) assert.equal((await invoke(n3, name)).status, 200, name);
    assert.equal((await request(`${n3}/f/alice/up`, { method: "POST", body: "x" })).text, "x");
    // Seeded: the others serve what n3 brought.
    await servedOn(c.url("n1"), "seeded", /^ping$/);
    await servedOn(c.url("n2"), "greet", /^ping$/);
  });

  it("a node that was away catches up with deploys and deletes made meanwhile", async () => {
    await c.kill("n2", "SIGTERM");
    assert.equal((await admin("n1", "/system/functions/early", { method: "DELETE" })).status, 202);
    assert.equal((await deploy("n1", "meanwhile", HELLO)).status, 201);
    await c.restart("n2", { waitForMembership: false });
    // It had `early` from the cluster, unchanged: the cluster deleted it, so does n2.
    assert.equal(errorCode(await invoke(c.url("n2"), "early")), "FUNCTION_NOT_FOUND");
    assert.match((await invoke(c.url("n2"), "meanwhile")).text, HELLO_TEXT);
  });
});
