import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { cp, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { CLUSTER_BUCKETS, type NodeInfo } from "../../src/cluster/contract.js";
import { startCluster, type TestCluster } from "../helpers/cluster.js";
import { errorCode, request } from "../helpers/http.js";
import { CLI, EXAMPLES, tempDir } from "../helpers/paths.js";
import { startTestServer } from "../helpers/server.js";
import { waitFor } from "../helpers/wait.js";

const run = promisify(execFile);

/** Runs the CLI with FENNEC_URL and FENNEC_TOKEN of the test's choosing only. */
async function fennec(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const { FENNEC_TOKEN: _t, FENNEC_URL: _u, ...inherited } = process.env;
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], { env: { ...inherited, ...env } });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** The figures of /stats this test reads. */
interface Stats {
  readonly nodes?: string[];
  readonly NumbInitVms: number;
  readonly FuncExecTimeNanoMax: number;
  readonly memory: { readonly budgetMiB: number };
  readonly functions: Record<string, { readonly invocations: number } | undefined>;
}

/** The bound: a node that stops heartbeating leaves every list within 15 s. */
const LEAVE_WITHIN_MS = 15_000;

describe("cluster membership: three fennec serve --cluster processes on one nats-server", () => {
  let cluster: TestCluster;
  let work: { dir: string; cleanup: () => Promise<void> };

  const nodesOf = async (name: string): Promise<NodeInfo[]> => {
    const res = await request(`${cluster.url(name)}/system/nodes`, { headers: cluster.headers });
    assert.equal(res.status, 200, res.text);
    return res.json<NodeInfo[]>();
  };

  /** Waits until every node but `gone` lists exactly the others; resolves with how long it took. */
  const leaves = async (gone: string, since: number): Promise<number> => {
    const rest = cluster.names.filter((n) => n !== gone);
    for (const name of rest)
      await waitFor(
        `${name} to drop ${gone}`,
        async () => (await cluster.members(name)).join() === rest.join(),
        {
          intervalMs: 100,
        },
      );
    return Date.now() - since;
  };

  before(async () => {
    work = await tempDir("fennec-cluster-nodes-");
    // A small registry: a wasm function every node runs, a [process] one only --process nodes run.
    const registry = join(work.dir, "registry");
    await mkdir(registry);
    for (const fn of ["hello", "hello-process"])
      await cp(join(EXAMPLES, fn), join(registry, fn), {
        recursive: true,
        filter: (s) => !s.includes(".fennec"),
      });
    cluster = await startCluster({
      registry,
      // n1 leaves [process] off (the default); n2 and n3 enable it.
      nodes: ["n1", { name: "n2", args: ["--process"] }, { name: "n3", args: ["--process"] }],
    });
  });

  after(async () => {
    await cluster?.stop();
    await work?.cleanup();
  });

  it("lists every node with its address and the sandboxes it has; a node without one says why", async () => {
    for (const name of cluster.names) {
      const nodes = await nodesOf(name);
      assert.deepEqual(
        nodes.map((n) => n.name),
        ["n1", "n2", "n3"],
      );
      for (const n of nodes) {
        assert.equal(n.url, cluster.url(n.name), `${name} sees ${n.name} at its gateway`);
        assert.ok(n.incarnation.length > 0);
        assert.ok(n.memory.budgetMiB > 0);
        assert.ok(n.sandboxes.includes("wasm"), `${n.name}: ${n.sandboxes.join(" ")}`);
      }
      const [n1, n2, n3] = nodes;
      assert.ok(!n1!.sandboxes.includes("process"));
      assert.match(n1!.missing["process"] ?? "", /--process/);
      assert.ok(n2!.sandboxes.includes("process") && n3!.sandboxes.includes("process"));
      assert.equal(n2!.missing["process"], undefined);
    }
    // Admin-guarded like /system/calls.
    const anonymous = await request(`${cluster.url("n1")}/system/nodes`);
    assert.equal(anonymous.status, 401);
    assert.equal(errorCode(anonymous), "UNAUTHORIZED");
    const one = await request(`${cluster.url("n1")}/system/nodes/n3`, { headers: cluster.headers });
    assert.equal(one.json<NodeInfo>().name, "n3");
    const ghost = await request(`${cluster.url("n1")}/system/nodes/ghost`, { headers: cluster.headers });
    assert.equal(ghost.status, 404);
  });

  it("every response says which node answered (x-fennec-node)", async () => {
    const servedBy = new Set<string | null>();
    for (const name of cluster.names) {
      const url = cluster.url(name);
      assert.equal((await request(`${url}/healthz`)).headers.get("x-fennec-node"), name);
      // A call may be served by another node than the one it entered (placement): the header
      // names the one whose instance answered, the same one whichever node it entered.
      const hello = await request(`${url}/invoke/hello/`);
      assert.equal(hello.status, 200, hello.text);
      servedBy.add(hello.headers.get("x-fennec-node"));
      const missing = await request(`${url}/invoke/no-such-function/`);
      assert.equal(missing.status, 404);
      assert.equal(missing.headers.get("x-fennec-node"), name);
    }
    assert.equal(servedBy.size, 1, [...servedBy].join(", "));
    assert.ok(cluster.names.includes([...servedBy][0] ?? ""), [...servedBy].join(", "));
  });

  it("a node's own entry is current; the others see its warm instances at its next heartbeat", async () => {
    const r = await request(`${cluster.url("n2")}/invoke/hello-process/`);
    assert.equal(r.status, 200);
    // Placement runs it on n2 or n3 (the nodes with [process]): the node that served it.
    const served = r.headers.get("x-fennec-node") ?? "";
    assert.ok(served === "n2" || served === "n3", served);
    const own = (await nodesOf(served)).find((n) => n.name === served)!;
    assert.ok((own.functions["default/hello-process"]?.warm ?? 0) >= 1, JSON.stringify(own.functions));
    assert.ok(Date.now() - own.heartbeatAt < 1_000, "built now, not a heartbeat old");
    await waitFor(`n1 to see ${served}'s warm hello-process`, async () => {
      const other = (await nodesOf("n1")).find((n) => n.name === served);
      const load = other?.functions["default/hello-process"];
      return load && load.warm >= 1 && load.memoryMiB > 0 && load.revision !== undefined;
    });
  });

  it("fennec nodes prints a table: names, addresses, sandboxes, what is missing and why, warm instances", async () => {
    const r = await fennec(["nodes"], { FENNEC_URL: cluster.url("n3"), FENNEC_TOKEN: cluster.token! });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^NODE\s+ADDRESS\s+MEMORY \(MiB\)\s+IN FLIGHT\s+WARM/);
    for (const name of cluster.names)
      assert.match(r.stdout, new RegExp(`^${name}\\s+${cluster.url(name)}\\s+\\d+/\\d+`, "m"));
    assert.match(r.stdout, /missing process: .*--process/);
    assert.match(r.stdout, /default\/hello-process=\d/);
    const json = await fennec(["nodes", "--json"], {
      FENNEC_URL: cluster.url("n3"),
      FENNEC_TOKEN: cluster.token!,
    });
    assert.deepEqual(
      (JSON.parse(json.stdout) as NodeInfo[]).map((n) => n.name),
      ["n1", "n2", "n3"],
    );
    const refused = await fennec(["nodes"], { FENNEC_URL: cluster.url("n3") });
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /HTTP 401/);
  });

  it("fennec stats --cluster adds up every node's /stats", async () => {
    const calls: Record<string, number> = { n1: 2, n2: 3, n3: 1 };
    for (const [name, n] of Object.entries(calls))
      for (let i = 0; i < n; i++)
        assert.equal((await request(`${cluster.url(name)}/invoke/hello/`)).status, 200);
    const per = await Promise.all(
      cluster.names.map(async (name) => (await request(`${cluster.url(name)}/stats`)).json<Stats>()),
    );
    const r = await fennec(["stats", "--cluster"], {
      FENNEC_URL: cluster.url("n1"),
      FENNEC_TOKEN: cluster.token!,
    });
    assert.equal(r.code, 0, r.stderr);
    const sum = JSON.parse(r.stdout) as Stats;
    assert.deepEqual(sum["nodes"], ["n1", "n2", "n3"]);
    const add = (f: (d: Stats) => number) => per.reduce((s, d) => s + f(d), 0);
    assert.equal(
      sum["NumbInitVms"],
      add((d) => d["NumbInitVms"]),
    );
    assert.equal(
      sum.functions["default/hello"]?.invocations,
      add((d) => d["functions"]["default/hello"]?.invocations ?? 0),
    );
    // The earlier test called hello once per node, this one six times more.
    assert.ok((sum.functions["default/hello"]?.invocations ?? 0) >= 9);
    assert.equal(
      sum["memory"].budgetMiB,
      add((d) => d["memory"].budgetMiB),
    );
    assert.equal(sum["FuncExecTimeNanoMax"], Math.max(...per.map((d) => d.FuncExecTimeNanoMax)));
    // Plain `fennec stats` stays one node's.
    const one = JSON.parse((await fennec(["stats"], { FENNEC_URL: cluster.url("n2") })).stdout) as Stats;
    assert.equal(one.nodes, undefined);
  });

  it("a second live node with a taken name is refused at start (NODE_NAME_TAKEN), the first stays", async () => {
    const { dir, cleanup } = await tempDir("fennec-dup-");
    try {
      const child = spawn(
        process.execPath,
        [
          CLI,
          "serve",
          "-r",
          cluster.node("n2").registry,
          "--port",
          "0",
          "--cluster",
          cluster.nats.url,
          "--node",
          "n2",
          "--state-dir",
          join(dir, "state"),
        ],
        { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, FENNEC_RUN_DIR: join(dir, "run") } },
      );
      let stderr = "";
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
      assert.notEqual(code, 0, stderr);
      assert.match(stderr, /another live node is already named "n2"/);
      assert.doesNotMatch(stderr, /Fennec serving/);
    } finally {
      await cleanup();
    }
    await cluster.waitForMembers(["n1", "n2", "n3"]);
    assert.equal((await nodesOf("n1")).find((n) => n.name === "n2")!.url, cluster.url("n2"));
  });

  it("a start that fails after joining (its port is taken) exits, and leaves the name free", async () => {
    const { dir, cleanup } = await tempDir("fennec-failed-start-");
    try {
      // An empty registry: nothing of this node's is shared with the cluster.
      await mkdir(join(dir, "registry"));
      const busyPort = new URL(cluster.url("n1")).port;
      const child = spawn(
        process.execPath,
        [
          CLI,
          "serve",
          "-r",
          join(dir, "registry"),
          "--port",
          busyPort,
          "--cluster",
          cluster.nats.url,
          "--node",
          "n9",
          "--state-dir",
          join(dir, "state"),
        ],
        { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, FENNEC_RUN_DIR: join(dir, "run") } },
      );
      let stderr = "";
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      // An open NATS connection or watch would keep the failed process alive: it must exit.
      const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
      const [code, signal] = await new Promise<[number | null, string | null]>((resolve) =>
        child.once("exit", (c, s) => resolve([c, s])),
      );
      clearTimeout(timer);
      assert.equal(signal, null, `killed after 60 s: it hung\n${stderr}`);
      assert.equal(code, 1, stderr);
      assert.match(stderr, /cannot listen on 127\.0\.0\.1:\d+: the address is already in use/);
      // It had claimed n9 (the claim comes first): the key is deleted, not left to age.
      const nc = await connect({ servers: cluster.nats.url });
      try {
        const entry = await (await new Kvm(nc).open(CLUSTER_BUCKETS.nodes)).get("n9");
        assert.notEqual(entry?.operation, "PUT");
      } finally {
        await nc.close();
      }
    } finally {
      await cleanup();
    }
  });

  it("a partitioned node (SIGSTOP: its heartbeats stop) leaves within 15 s and rejoins when they resume", async () => {
    const since = Date.now();
    await cluster.kill("n3", "SIGSTOP");
    // Meanwhile, still listed but not answering: stats --cluster adds up the others and names it.
    const stats = fennec(["stats", "--cluster"], {
      FENNEC_URL: cluster.url("n1"),
      FENNEC_TOKEN: cluster.token!,
    });
    const took = await leaves("n3", since);
    assert.ok(took <= LEAVE_WITHIN_MS, `n3 left after ${took} ms`);
    const partial = await stats;
    assert.equal(partial.code, 1, partial.stderr);
    assert.match(
      partial.stderr,
      /node n3 \(http:\/\/127\.0\.0\.1:\d+\): cannot reach Fennec .*no answer within 10000 ms/,
    );
    assert.deepEqual((JSON.parse(partial.stdout) as Stats).nodes, ["n1", "n2"]);
    await cluster.kill("n3", "SIGCONT");
    await cluster.waitForMembers(["n1", "n2", "n3"]);
    // Same process, same incarnation: it rejoined, it did not restart.
    const n3 = (await nodesOf("n1")).find((n) => n.name === "n3")!;
    assert.equal(n3.url, cluster.url("n3"));
  });

  it("a node killed with SIGKILL leaves within 15 s; started again under its name, it takes its place back", async () => {
    const before = (await nodesOf("n1")).find((n) => n.name === "n3")!.incarnation;
    const since = Date.now();
    await cluster.kill("n3", "SIGKILL");
    const took = await leaves("n3", since);
    assert.ok(took <= LEAVE_WITHIN_MS, `n3 left after ${took} ms`);
    await cluster.restart("n3");
    const after = (await nodesOf("n1")).find((n) => n.name === "n3")!;
    assert.notEqual(after.incarnation, before);
    assert.equal(after.url, cluster.url("n3"));
  });

  it("a node stopped cleanly (SIGTERM) leaves at once: its entry is deleted, not left to age", async () => {
    const since = Date.now();
    await cluster.kill("n3", "SIGTERM");
    const took = await leaves("n3", since);
    // Well under the TTL (10 s): the delete reached the others.
    assert.ok(took < 5_000, `n3 left after ${took} ms`);
    await cluster.restart("n3");
  });
});

describe("a node without --cluster", () => {
  it("says its name on every response and lists itself alone in /system/nodes", async () => {
    const s = await startTestServer({ node: "solo", token: "t0ken" });
    try {
      for (const path of ["/healthz", "/invoke/hello/", "/stats", "/no-such-route"])
        assert.equal((await request(`${s.url}${path}`)).headers.get("x-fennec-node"), "solo", path);
      const nodes = await request(`${s.url}/system/nodes`, { headers: { authorization: "Bearer t0ken" } });
      const list = nodes.json<NodeInfo[]>();
      assert.deepEqual(
        list.map((n) => [n.name, n.url]),
        [["solo", s.url]],
      );
      assert.ok(list[0]!.sandboxes.includes("wasm"));
      assert.ok((list[0]!.functions["default/hello"]?.warm ?? 0) >= 1);
      const r = await fennec(["nodes"], { FENNEC_URL: s.url, FENNEC_TOKEN: "t0ken" });
      assert.match(r.stdout, /^solo\s+http:\/\/127\.0\.0\.1:\d+\s/m);
    } finally {
      await s.close();
    }
  });
});
