import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { cp, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { CLUSTER_BUCKETS, FORWARDED_BY_HEADER, NODE_HEADER } from "../../src/cluster/contract.js";
import { FORWARD_AUTH_HEADER } from "../../src/cluster/forward-auth.js";
import { startCluster, type TestCluster } from "../helpers/cluster.js";
import { startNats, type TestNats } from "../helpers/nats.js";
import { CLI, EXAMPLES, tempDir } from "../helpers/paths.js";
import { addWasmFunction, rawRequest, startTestServer, type TestServer } from "../helpers/server.js";
import { GENEROUS_MS, waitFor } from "../helpers/wait.js";

/** The NATS password: with characters a URL must percent-encode. */
const PASS = "n@ts p/ss:1";
const USER = "fennec";

interface CallRecordView {
  id: string;
  node: string;
  via?: string;
  placement?: string;
  kind: string;
  state: string;
}

/**
 * Two real nodes on a nats-server that requires a user and password (docs/cluster.md, "Security"):
 * they join with the credentials in `--cluster`, forward calls to each other signed with the key
 * they share through NATS, and refuse forwarding headers a client forges.
 */
describe("an authenticated cluster (nats-server --user/--pass, two fennec serve --cluster)", () => {
  let nats: TestNats;
  let cluster: TestCluster;
  let work: { dir: string; cleanup: () => Promise<void> };
  let url: string;

  before(async () => {
    work = await tempDir("fennec-cluster-auth-");
    const registry = join(work.dir, "registry");
    await mkdir(registry);
    await cp(join(EXAMPLES, "echo"), join(registry, "echo"), {
      recursive: true,
      filter: (s) => !s.includes(".fennec"),
    });
    // Shows every HTTP_* variable it was given: what headers reached the function.
    await addWasmFunction(registry, "env", "env.wasm", "concurrent-requests = 4");
    nats = await startNats({ user: USER, pass: PASS });
    url = `nats://${USER}:${encodeURIComponent(PASS)}@127.0.0.1:${nats.port}`;
    cluster = await startCluster({ nats, clusterUrl: url, registry, nodes: ["n1", "n2"] });
  });

  after(async () => {
    await cluster?.stop();
    await nats?.stop();
    await work?.cleanup();
  });

  const record = async (id: string, on = "n1"): Promise<CallRecordView> =>
    waitFor(`the record of ${id} on ${on}`, async () => {
      const res = await fetch(`${cluster.url(on)}/system/calls/${id}`, { headers: cluster.headers });
      return res.ok ? ((await res.json()) as CallRecordView) : undefined;
    });

  it("forwards calls between nodes (x-fennec-node names the remote), and the function sees no forwarding header, only its own call id", async () => {
    const answers = [];
    for (const entry of ["n1", "n2", "n1", "n2"]) {
      const res = await rawRequest(cluster.url(entry), "POST", "/invoke/env/p?q=1", "body", {
        "x-custom": "kept",
      });
      assert.equal(res.status, 200, res.text);
      answers.push({
        entry,
        node: res.headers[NODE_HEADER] as string,
        id: res.headers["x-call-id"] as string,
        text: res.text,
      });
    }
    // One node is the function's home: every call runs there, whichever node it entered.
    assert.equal(new Set(answers.map((a) => a.node)).size, 1, JSON.stringify(answers.map((a) => a.node)));
    const forwarded = answers.filter((a) => a.node !== a.entry);
    assert.equal(forwarded.length, 2);
    for (const a of answers) {
      assert.match(a.text, /HTTP_X_CUSTOM=kept/);
      assert.doesNotMatch(a.text, /HTTP_X_FENNEC_/, `${a.entry}: ${a.text}`);
      // The call's own id, the one its record has and the client got: never a client's.
      assert.match(a.text, new RegExp(`HTTP_X_CALL_ID=${a.id}\\n`));
    }
    for (const a of forwarded) {
      const r = await record(a.id, a.entry);
      assert.equal(r.node, a.node);
      assert.equal(r.via, a.entry);
      assert.equal(r.placement !== undefined, true);
    }
  });

  it("refuses forwarding headers a client forges (403 FORWARD_UNAUTHENTICATED): it can neither pin a call nor overwrite another call's record", async () => {
    // A sync call and an async one, each with its record.
    const sync = await rawRequest(cluster.url("n1"), "POST", "/invoke/echo", "first");
    assert.equal(sync.status, 200, sync.text);
    const syncId = sync.headers["x-call-id"] as string;
    const home = sync.headers[NODE_HEADER] as string;
    const other = home === "n1" ? "n2" : "n1";
    const accepted = await rawRequest(cluster.url("n1"), "POST", "/fa/default/echo", "async one");
    assert.equal(accepted.status, 202, accepted.text);
    const asyncId = accepted.headers["x-call-id"] as string;
    await waitFor("the async call to finish", async () => (await record(asyncId)).state === "succeeded");
    const before = { sync: await record(syncId), async: await record(asyncId) };

    for (const target of [syncId, asyncId]) {
      for (const signature of [
        undefined,
        "v1.1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        `v1.${Date.now()}.${"A".repeat(43)}`,
      ]) {
        // Sent to the node that is not the function's home: a trusted header would pin it there.
        const res = await rawRequest(cluster.url(other), "POST", "/invoke/echo", "forged", {
          [FORWARDED_BY_HEADER]: home,
          "x-fennec-placement": "warm",
          "x-call-id": target,
          ...(signature ? { [FORWARD_AUTH_HEADER]: signature } : {}),
        });
        assert.equal(res.status, 403, res.text);
        assert.equal(res.headers["x-fennec-error"], "FORWARD_UNAUTHENTICATED");
        assert.equal(res.headers[NODE_HEADER], other);
        assert.notEqual(res.headers["x-call-id"], target);
      }
    }
    // Both records are as they were, on both nodes.
    for (const on of ["n1", "n2"]) {
      assert.deepEqual(await record(syncId, on), before.sync);
      assert.deepEqual(await record(asyncId, on), before.async);
    }
  });

  it("keeps the forwarding key in NATS, readable with the cluster's credentials, and out of every log and /system/nodes", async () => {
    const nc = await connect({ servers: nats.url, user: USER, pass: PASS });
    let key: string;
    try {
      const kv = await new Kvm(nc).open(CLUSTER_BUCKETS.cluster);
      const entry = await kv.get("forward-key");
      assert.ok(entry, "no forward-key in the cluster bucket");
      key = entry.string();
    } finally {
      await nc.close();
    }
    assert.equal(Buffer.from(key, "base64url").length, 32);
    const nodes = await (
      await fetch(`${cluster.url("n1")}/system/nodes`, { headers: cluster.headers })
    ).text();
    for (const secret of [key, PASS, encodeURIComponent(PASS)]) {
      assert.ok(!nodes.includes(secret), "/system/nodes shows a secret");
      for (const name of cluster.names)
        assert.ok(!cluster.node(name).log().includes(secret), `${name}'s log shows a secret`);
    }
  });

  it("a node with a wrong password, or none, fails at start with CLUSTER_AUTH in one line that names no secret", async () => {
    const { dir, cleanup } = await tempDir("fennec-auth-refused-");
    try {
      await mkdir(join(dir, "registry"));
      // The wrong password through the environment (FENNEC_CLUSTER, off the command line), then none at all.
      const starts: Array<{ args: string[]; env: Record<string, string> }> = [
        { args: [], env: { FENNEC_CLUSTER: `nats://${USER}:wrong-secret@127.0.0.1:${nats.port}` } },
        { args: ["--cluster", nats.url], env: {} },
      ];
      for (const start of starts) {
        const child = spawn(
          process.execPath,
          [
            CLI,
            "serve",
            "-r",
            join(dir, "registry"),
            "--port",
            "0",
            ...start.args,
            "--node",
            "n9",
            "--state-dir",
            join(dir, "state"),
          ],
          {
            stdio: ["ignore", "pipe", "pipe"],
            env: { ...process.env, FENNEC_RUN_DIR: join(dir, "run"), ...start.env },
          },
        );
        let stderr = "";
        child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
        child.stdout.resume();
        // A node that starts after all (it was let in) is stopped at the deadline: the test fails, it never hangs.
        const timer = setTimeout(() => child.kill("SIGKILL"), GENEROUS_MS);
        const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
        clearTimeout(timer);
        assert.equal(code, 1, stderr);
        const said = stderr
          .trim()
          .split("\n")
          .filter((l) => l.startsWith("fennec:"));
        assert.equal(said.length, 1, stderr);
        assert.match(
          said[0]!,
          /^fennec: CLUSTER_AUTH: the cluster's NATS server at nats:\/\/(\*\*\*@)?127\.0\.0\.1:\d+ refused this node's credentials/,
        );
        assert.ok(!stderr.includes("wrong-secret"), stderr);
        assert.doesNotMatch(stderr, /Fennec serving/);
      }
    } finally {
      await cleanup();
    }
  });
});

/** A single node (no --cluster) knows nothing of forwarding: the headers are a client's, and never reach the function. */
describe("forwarding headers on a single node", () => {
  let server: TestServer;
  before(async () => {
    server = await startTestServer();
    await addWasmFunction(server.registry, "env", "env.wasm");
  });
  after(async () => {
    await server?.close();
  });

  it("serves the call as any client's, under an id of its own, and the function sees none of them", async () => {
    const chosen = "0190f0a0-0000-7000-8000-00000000abcd";
    const res = await waitFor("env to serve", async () => {
      const r = await rawRequest(server.url, "POST", "/invoke/env", "x", {
        [FORWARDED_BY_HEADER]: "n7",
        "x-fennec-placement": "warm",
        [FORWARD_AUTH_HEADER]: "v1.1.forged",
        "x-call-id": chosen,
      });
      return r.status === 404 ? undefined : r;
    });
    assert.equal(res.status, 200, res.text);
    const id = res.headers["x-call-id"] as string;
    assert.notEqual(id, chosen);
    assert.doesNotMatch(res.text, /HTTP_X_FENNEC_/);
    assert.match(res.text, new RegExp(`HTTP_X_CALL_ID=${id}\\n`));
    const r = await waitFor("the record", async () => {
      await server.fennec.store.flush();
      return server.fennec.store.get(id);
    });
    assert.equal(r.via, undefined);
    assert.equal(r.placement, undefined);
    assert.equal(await server.fennec.store.get(chosen), undefined);
  });
});
