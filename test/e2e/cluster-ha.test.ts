import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cp, readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { CLUSTER_STREAMS } from "../../src/cluster/replicas.js";
import { storeStreams } from "../../src/store/jetstream/open.js";
import { startCluster, type TestCluster } from "../helpers/cluster.js";
import { request, type Reply } from "../helpers/http.js";
import { startNatsCluster, type TestNatsCluster, type TestNatsServer } from "../helpers/nats-cluster.js";
import { startNats, type TestNats } from "../helpers/nats.js";
import { CLI, EXAMPLES, tempDir } from "../helpers/paths.js";
import { addWasmFunction } from "../helpers/server.js";
import { waitFor } from "../helpers/wait.js";

// docs/cluster.md, "A production topology": three nats-servers in one NATS cluster, every bucket
// and stream with 3 replicas, two Fennec nodes listing all three servers. One server is SIGKILLed
// under load; nothing accepted may be lost and the cluster keeps serving. With one replica (old
// main, or --cluster-replicas 1) the server holding the calls stream takes the store with it.
const REPLICAS = 3;
const STREAMS = [...CLUSTER_STREAMS, ...storeStreams("fennec")];

/**
 * Runs `fennec serve ARGS` on `registry` and resolves with its exit code and stderr: a start that
 * is refused exits at once; one that serves is killed at the deadline (and fails the test).
 */
function serveOnce(
  registry: string,
  args: readonly string[],
): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [
        CLI,
        "serve",
        "-r",
        registry,
        "--port",
        "0",
        "--state-dir",
        join(registry, ".fennec", "state"),
        ...args,
      ],
      { timeout: 60_000, env: { ...process.env, FENNEC_RUN_DIR: join(registry, ".fennec", "run") } },
      (err, _stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : null) : 0;
        resolve({ code, stderr });
      },
    );
  });
}

describe("Fennec on a three-server NATS cluster, --cluster-replicas 3", () => {
  let nats: TestNatsCluster;
  let c: TestCluster<TestNatsCluster>;
  let cleanup: () => Promise<void>;
  let work: string;

  before(async () => {
    ({ dir: work, cleanup } = await tempDir("fennec-cluster-ha-"));
    // A small registry keeps each node's start quick on a busy machine.
    const registry = join(work, "registry");
    await cp(join(EXAMPLES, "hello"), join(registry, "hello"), { recursive: true });
    await addWasmFunction(registry, "nap", "sleep.wasm", "max-instances = 4");
    nats = await startNatsCluster(3);
    c = await startCluster({
      nodes: ["n1", "n2"],
      registry,
      nats,
      args: ["--cluster-replicas", String(REPLICAS)],
    });
  });
  after(async () => {
    await c?.stop();
    await nats?.stop();
    await cleanup?.();
  });

  /** JetStream's view of one stream: its replica count, leader and peers. */
  async function streamInfo(stream: string) {
    const nc = await nats.client();
    try {
      const info = await (await jetstreamManager(nc)).streams.info(stream);
      return {
        replicas: info.config.num_replicas,
        leader: info.cluster?.leader ?? "",
        peers: (info.cluster?.replicas ?? []).map((p) => ({ name: p.name, current: p.current })),
      };
    } finally {
      await nc.close();
    }
  }

  /** Polls `GET /fa/calls/<id>` until the call has ended. */
  const result = (url: string, id: string): Promise<Reply> =>
    waitFor(
      `call ${id} to end`,
      async () => {
        const r = await request(`${url}/fa/calls/${id}`);
        return r.status === 202 ? undefined : r;
      },
      { timeoutMs: 120_000, intervalMs: 100 },
    );

  it("keeps every bucket, stream and object store on three servers", async () => {
    for (const stream of STREAMS) {
      const info = await streamInfo(stream);
      assert.equal(info.replicas, REPLICAS, `${stream}: ${JSON.stringify(info)}`);
      assert.ok(info.leader, `${stream} has a leader`);
      assert.equal(info.peers.length, REPLICAS - 1, `${stream}: ${JSON.stringify(info)}`);
    }
  });

  it("loses no accepted call, deploy, member or sync call when the calls stream's leader is SIGKILLed", async (t) => {
    // The victim: the server node n1 is connected to, made the calls stream's leader (a leader
    // step-down moves it to a random peer; a few tries), so the kill takes both a client's
    // connection and the stream's leader. If that does not converge, the leader alone.
    const nc = await nats.client();
    let victim: TestNatsServer;
    try {
      const n1Server = await waitFor("n1's connection to show on a server", async () => {
        for (const s of nats.servers) if ((await s.connections()).includes("fennec:n1")) return s;
        return undefined;
      });
      for (let i = 0; REPLICAS > 1 && i < 10; i++) {
        const { leader } = await streamInfo("KV_fennec-calls");
        if (leader === n1Server.name) break;
        await nc.request("$JS.API.STREAM.LEADER.STEPDOWN.KV_fennec-calls", undefined, { timeout: 10_000 });
        await waitFor("a new leader of the calls stream", async () => {
          const now = (await streamInfo("KV_fennec-calls")).leader;
          return now !== "" && now !== leader;
        });
      }
      victim = nats.server((await streamInfo("KV_fennec-calls")).leader);
      const connected = await victim.connections();
      t.diagnostic(
        `killing ${victim.name}: leader of KV_fennec-calls; Fennec clients on it: ${connected.filter((n) => n.startsWith("fennec:")).join(", ") || "none"}`,
      );
    } finally {
      await nc.close();
    }

    const urls = { n1: c.url("n1"), n2: c.url("n2") };
    const accepted: Array<{ id: string; at: string }> = [];
    let refused = 0;
    const sync = { ok: 0, failed: 0, okAfterKill: { n1: 0, n2: 0 } };
    let killed = false;
    let killedAt = 0;
    let dropped = "";
    let stop = false;
    // Async calls alternately on both nodes.
    const submitting = (async () => {
      for (let i = 0; !stop; i++) {
        const at = i % 2 === 0 ? "n1" : "n2";
        const r = await request(`${urls[at]}/fa/default/nap?ms=1`, { method: "POST" }).catch(() => undefined);
        if (r?.status === 202) accepted.push({ id: r.json<{ callId: string }>().callId, at });
        else refused++;
      }
    })();
    // Sync calls on both nodes.
    const calling = (async () => {
      for (let i = 0; !stop; i++) {
        const at = i % 2 === 0 ? "n1" : "n2";
        const r = await request(`${urls[at]}/invoke/hello/`).catch(() => undefined);
        if (r?.status === 200) {
          sync.ok++;
          if (killed) sync.okAfterKill[at]++;
        } else sync.failed++;
      }
    })();
    // Membership: neither node may lose the other while a NATS server is down.
    const watching = (async () => {
      while (!stop) {
        for (const name of ["n1", "n2"]) {
          const seen = await c.members(name).catch((e: unknown) => [`error: ${(e as Error).message}`]);
          if (seen.join(",") !== "n1,n2")
            dropped ||= `${name} saw [${seen.join(", ")}] ${killedAt ? Date.now() - killedAt : -1} ms after the kill`;
        }
        await new Promise((r) => setTimeout(r, 250));
      }
    })();

    try {
      await waitFor("calls accepted before the kill", () => accepted.length >= 20);
      await victim.kill();
      killed = true;
      killedAt = Date.now();
      const atKill = accepted.length;
      await waitFor("calls accepted with a NATS server dead", () => accepted.length >= atKill + 30);

      // The functions bucket and artefacts take a deploy on n2, which n1 then serves.
      const deploy = await request(`${urls.n2}/system/functions`, {
        method: "POST",
        headers: { ...c.headers, "content-type": "application/json" },
        body: JSON.stringify({
          name: "echo",
          toml: 'keepalive = 30\nconcurrent-requests = 1\n\n[wasm]\nmodule = "echo.wasm"\nmemory = 16\n',
          module: (await readFile(join(EXAMPLES, "echo", "echo.wasm"))).toString("base64"),
        }),
      });
      assert.equal(deploy.status, 201, deploy.text);
      await waitFor("echo, deployed on n2, to answer on n1", async () => {
        const r = await request(`${urls.n1}/invoke/echo/`, { method: "POST", body: "ha" });
        return r.status === 200 && r.text === "ha";
      });
      await waitFor("sync calls answered on both nodes after the kill", () =>
        Object.values(sync.okAfterKill).every((n) => n >= 10),
      );
    } finally {
      stop = true;
      await Promise.all([submitting, calling, watching]);
    }

    // Every accepted call ran, once or more (at least once: duplicates are counted).
    let duplicates = 0;
    for (const { id, at } of accepted) {
      const r = await result(urls[at === "n1" ? "n2" : "n1"], id);
      assert.equal(r.status, 200, `${id}: ${r.text}`);
      if (r.headers.get("x-fennec-call-attempt") !== "1") duplicates++;
    }
    t.diagnostic(
      `async: ${accepted.length} accepted, ${refused} refused, ${duplicates} ran more than once; sync: ${sync.ok} answered, ${sync.failed} failed`,
    );
    assert.equal(dropped, "", `a node lost the other from its list: ${dropped}\n${c.logs()}`);
    assert.ok(sync.okAfterKill.n1 >= 10 && sync.okAfterKill.n2 >= 10);

    // The killed server comes back and catches up: every stream lists it as a current peer again.
    await victim.start();
    for (const stream of STREAMS) {
      await waitFor(`${victim.name} to be a current peer of ${stream} again`, async () => {
        const info = await streamInfo(stream);
        return info.leader === victim.name || info.peers.some((p) => p.name === victim.name && p.current);
      });
    }
    const after = await request(`${urls.n1}/fa/default/nap?ms=1`, { method: "POST" });
    assert.equal(after.status, 202, after.text);
    assert.equal((await result(urls.n2, after.json<{ callId: string }>().callId)).status, 200);
  });

  it("refuses a node asking for more replicas than the cluster's three servers, changing nothing", async () => {
    const registry = join(work, "n5");
    await cp(join(EXAMPLES, "hello"), join(registry, "hello"), { recursive: true });
    const { code, stderr } = await serveOnce(registry, [
      "--cluster",
      nats.url,
      "--node",
      "n5",
      "--cluster-replicas",
      "5",
    ]);
    assert.equal(code, 1, stderr);
    assert.match(stderr, /JetStream cannot keep 5 replica\(s\) of .*no suitable peers for placement/);
    for (const stream of STREAMS) assert.equal((await streamInfo(stream)).replicas, REPLICAS, stream);
  });
});

describe("--cluster-replicas: bad input at start", () => {
  let nats: TestNats;
  let work: string;
  let cleanup: () => Promise<void>;
  before(async () => {
    ({ dir: work, cleanup } = await tempDir("fennec-replicas-args-"));
    await cp(join(EXAMPLES, "hello"), join(work, "hello"), { recursive: true });
    nats = await startNats();
  });
  after(async () => {
    await nats?.stop();
    await cleanup?.();
  });

  it("is a wrong command line (exit 2) unless a whole number from 1 to 5, with --cluster", async () => {
    for (const bad of ["0", "6", "three", "1.5", "-1"]) {
      const { code, stderr } = await serveOnce(work, ["--cluster", nats.url, `--cluster-replicas=${bad}`]);
      assert.equal(code, 2, `${bad}: ${stderr}`);
      assert.match(stderr, /--cluster-replicas expects a whole number from 1 to 5/);
    }
    const alone = await serveOnce(work, ["--cluster-replicas", "3"]);
    assert.equal(alone.code, 2, alone.stderr);
    assert.match(alone.stderr, /--cluster-replicas applies to a cluster: give --cluster too/);
  });

  it("refuses more than one replica on a single nats-server (exit 1) before anything is created", async () => {
    const { code, stderr } = await serveOnce(work, ["--cluster", nats.url, "--cluster-replicas", "3"]);
    assert.equal(code, 1, stderr);
    assert.match(stderr, /--cluster-replicas 3 needs a NATS cluster/);
    const nc = await connect({ servers: nats.url });
    try {
      const names = [];
      for await (const name of (await jetstreamManager(nc)).streams.names()) names.push(name);
      assert.deepEqual(names, [], "no bucket or stream was created");
    } finally {
      await nc.close();
    }
  });
});
