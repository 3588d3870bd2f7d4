import assert from "node:assert/strict";
import { cp, mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { NODE_HEADER } from "../../src/cluster/contract.js";
import { startCluster, type TestCluster } from "../helpers/cluster.js";
import { EXAMPLES, tempDir } from "../helpers/paths.js";
import { waitFor } from "../helpers/wait.js";

/** Three real nodes on a real nats-server: where calls run (docs/cluster.md, "Placement"). */
describe("placement across three nodes (nats-server, three fennec serve --cluster)", () => {
  let cluster: TestCluster;
  let work: { dir: string; cleanup: () => Promise<void> };

  before(async () => {
    work = await tempDir("fennec-cluster-placement-");
    const registry = join(work.dir, "registry");
    await mkdir(registry);
    for (const fn of ["echo", "hello-process", "fib"])
      await cp(join(EXAMPLES, fn), join(registry, fn), {
        recursive: true,
        filter: (s) => !s.includes(".fennec"),
      });
    // Only n3 runs [process] functions.
    cluster = await startCluster({ registry, nodes: ["n1", "n2", { name: "n3", args: ["--process"] }] });
  });

  after(async () => {
    await cluster?.stop();
    await work?.cleanup();
  });

  const call = async (entry: string, fn: string, body: string) => {
    const res = await fetch(`${cluster.url(entry)}/invoke/${fn}`, { method: "POST", body });
    return {
      status: res.status,
      node: res.headers.get(NODE_HEADER),
      start: res.headers.get("x-fennec-start"),
      text: await res.text(),
    };
  };

  it("serves twenty sequential calls, whichever node takes them, on one node's one warm instance", async () => {
    const answers = [];
    for (let i = 0; i < 20; i++) answers.push(await call(cluster.names[i % 3]!, "echo", `call ${i}`));
    for (const [i, a] of answers.entries()) {
      assert.equal(a.status, 200, a.text);
      assert.equal(a.text, `call ${i}`);
    }
    assert.equal(
      new Set(answers.map((a) => a.node)).size,
      1,
      `served by ${answers.map((a) => a.node).join(", ")}`,
    );
    assert.ok(
      answers.slice(1).every((a) => a.start === "warm"),
      `starts: ${answers.map((a) => a.start).join(", ")}`,
    );
  });

  it("runs a function whose sandbox only one node has on that node only", async () => {
    for (const entry of cluster.names) {
      const a = await call(entry, "hello-process", "");
      assert.equal(a.status, 200, a.text);
      assert.equal(a.node, "n3");
    }
  });

  it("takes a deploy of a sandbox this node lacks when another node has it, and runs it there", async () => {
    // n1 has no [process]; n3 has. A single node would refuse this with 409 DRIVER_UNAVAILABLE.
    const handler = await readFile(join(EXAMPLES, "hello-process", "handler.ts"));
    const res = await fetch(`${cluster.url("n1")}/system/functions`, {
      method: "POST",
      headers: { ...cluster.headers, "content-type": "application/json" },
      body: JSON.stringify({
        name: "hello-process-2",
        toml: 'keepalive = 30\nconcurrent-requests = 8\n\n[process]\nhandler = "handler.ts"\n',
        files: { "handler.ts": handler.toString("base64") },
      }),
    });
    assert.equal(res.status, 201, await res.text());
    const a = await waitFor("hello-process-2 to answer through n1", async () => {
      const r = await call("n1", "hello-process-2", "");
      return r.status === 200 ? r : undefined;
    });
    assert.equal(a.node, "n3");
  });

  it("fails a call with NODE_LOST at once when the node running it is killed, and sends the next call elsewhere", async () => {
    // Where fib lives: its home (a quick call), and an entry node that is not it.
    const home = (await call("n1", "fib?n=1", "")).node!;
    const entry = cluster.names.find((n) => n !== home)!;
    const slow = fetch(`${cluster.url(entry)}/invoke/fib?n=44`, { method: "POST" });
    // Running there: the home's own heartbeat says a call is in flight.
    await waitFor("the slow call running on its node", async () => {
      const res = await fetch(`${cluster.url(entry)}/system/nodes`, { headers: cluster.headers });
      const nodes = (await res.json()) as Array<{ name: string; inFlight: number }>;
      return nodes.find((n) => n.name === home)?.inFlight;
    });
    const t0 = Date.now();
    await cluster.kill(home, "SIGKILL");
    const res = await slow;
    const took = Date.now() - t0;
    assert.equal(res.status, 502, await res.text());
    assert.equal(res.headers.get("x-fennec-error"), "NODE_LOST");
    assert.ok(took < 10_000, `NODE_LOST after ${took} ms`);
    const next = await call(entry, "fib?n=1", "");
    assert.equal(next.status, 200, next.text);
    assert.notEqual(next.node, home);
  });
});
