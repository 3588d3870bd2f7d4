import assert from "node:assert/strict";
import { mkdir, readFile, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Kvm } from "@nats-io/kv";
import { Objm } from "@nats-io/obj";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { packFunction, readFunctionFiles } from "../../src/cluster/artefact.js";
import { CLUSTER_BUCKETS, type SharedFunction } from "../../src/cluster/contract.js";
import { FunctionShare } from "../../src/cluster/function-share.js";
import { FennecError } from "../../src/core/errors.js";
import { createLogger } from "../../src/core/log.js";
import { DirectoryRegistry } from "../../src/registry/registry.js";
import { sandboxKinds } from "../../src/sandbox/drivers/index.js";
import { startNats, type TestNats } from "../helpers/nats.js";
import { tempDir } from "../helpers/paths.js";
import { waitFor } from "../helpers/wait.js";

const TOML = 'keepalive = 10\nconcurrent-requests = 1\n[wasm]\nmodule = "main.wasm"\n';
const LONG_AGO = new Date("2020-01-01T00:00:00Z");

/** One node's side of the share, in process: its own registry and connection, no scheduler. */
interface Node {
  readonly name: string;
  readonly registry: DirectoryRegistry;
  readonly nc: NatsConnection;
  share?: FunctionShare;
  readonly installed: string[];
  readonly removed: string[];
  readonly logs: string[];
}

// The rule of docs/cluster.md ("Functions across nodes"), decided by real JetStream buckets.
describe("function share: the later deploy wins", () => {
  let nats: TestNats;
  let work: string;
  let cleanup: () => Promise<void>;
  const nodes: Node[] = [];

  before(async () => {
    nats = await startNats();
    ({ dir: work, cleanup } = await tempDir());
  });
  after(async () => {
    for (const n of nodes) {
      await n.share?.close();
      await n.nc.close();
    }
    await nats?.stop();
    await cleanup?.();
  });

  async function node(name: string): Promise<Node> {
    const root = join(work, name);
    await mkdir(root, { recursive: true });
    const n: Node = {
      name,
      registry: new DirectoryRegistry(root, { loader: sandboxKinds.loader }),
      nc: await connect({ servers: nats.url }),
      installed: [],
      removed: [],
      logs: [],
    };
    nodes.push(n);
    return n;
  }
  const join_ = async (n: Node): Promise<void> => {
    n.share = await FunctionShare.start({
      nc: n.nc,
      node: n.name,
      registry: n.registry,
      log: createLogger("info", (line) => n.logs.push(line) > 0),
      // This node's check: a module that says "bad" is refused.
      check: () => async (config) => {
        if (config.sandbox.kind === "wasm" && (await readFile(config.sandbox.module, "utf8")) === "bad")
          throw new FennecError("MODULE_INVALID", "a bad module");
      },
      installed: (config) => n.installed.push(config.key),
      removed: async (key) => void n.removed.push(key),
    });
  };
  /** A function written straight into a node's -r DIR, its files `age` old. */
  async function onDisk(n: Node, fn: string, data: string, age?: Date): Promise<void> {
    const dir = join(n.registry.root, fn);
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "function.toml"), TOML);
    await writeFile(join(dir, "main.wasm"), data);
    if (age) for (const f of ["function.toml", "main.wasm"]) await utimes(join(dir, f), age, age);
  }
  const dataOf = (n: Node, fn: string) =>
    readFile(join(n.registry.root, fn, "main.wasm"), "utf8").catch(() => undefined);
  const record = async (fn: string): Promise<SharedFunction | undefined> => {
    const kv = await new Kvm(nodes[0]!.nc).open(CLUSTER_BUCKETS.functions);
    const e = await kv.get(`default.${fn}`);
    return e?.operation === "PUT" ? e.json<SharedFunction>() : undefined;
  };

  it("at a join: the cluster's later revision is installed, a later local copy is published, a new one seeds", async () => {
    const a = await node("a");
    await onDisk(a, "older-here", "a's old", LONG_AGO);
    await onDisk(a, "newer-here", "a's new");
    await join_(a);
    // a seeded the cluster with both.
    assert.equal((await record("older-here"))?.deployedBy, "a");

    const b = await node("b");
    await onDisk(b, "older-here", "b's newer"); // b's copy is newer (files modified now)
    await onDisk(b, "newer-here", "b's old", LONG_AGO); // the cluster's is newer
    await onDisk(b, "only-b", "b's own", LONG_AGO);
    await join_(b);
    assert.equal(await dataOf(b, "newer-here"), "a's new", "the cluster's later revision replaced b's copy");
    assert.equal(await dataOf(b, "older-here"), "b's newer", "b kept its later copy");
    assert.equal((await record("older-here"))?.deployedBy, "b", "and published it");
    assert.equal((await record("only-b"))?.deployedBy, "b", "a function only b had seeded the cluster");
    // a follows: b's later copy and b's new function arrive.
    await waitFor(
      "a to install b's functions",
      async () =>
        (await dataOf(a, "older-here")) === "b's newer" &&
        (await dataOf(a, "only-b")) === "b's own" &&
        a.installed.includes("default/older-here"),
    );
  });

  it("deploys at once on two nodes, again and again, end with one revision everywhere", async () => {
    const [a, b] = nodes as [Node, Node];
    const id = { user: "default", name: "race" };
    for (let round = 0; round < 5; round++) {
      await Promise.all([
        a.registry.deploy(id, TOML, new Map([["main.wasm", Buffer.from(`a${round}`)]])),
        b.registry.deploy(id, TOML, new Map([["main.wasm", Buffer.from(`b${round}`)]])),
      ]);
    }
    const settled = await waitFor("both nodes to hold the bucket's revision of race", async () => {
      const shared = await record("race");
      const [ra, rb] = await Promise.all(
        [a, b].map((n) =>
          n.registry.inspect(id, async (dir) => (dir ? (await readFunctionFiles(dir)).revision : undefined)),
        ),
      );
      return shared && ra === shared.revision && rb === shared.revision ? shared : undefined;
    });
    // The winner is one of the last round's deploys.
    assert.match((await dataOf(a, "race")) ?? "", /^[ab]4$/);
    assert.equal(await dataOf(a, "race"), `${settled.deployedBy}4`);
  });

  it("a delete reaches the other node; a node away meanwhile deletes its unchanged copy at its next join", async () => {
    const [a, b] = nodes as [Node, Node];
    await b.share!.close();
    await a.registry.remove({ user: "default", name: "only-b" });
    await waitFor("the delete to reach the bucket", async () => (await record("only-b")) === undefined);
    assert.equal(await dataOf(b, "only-b"), "b's own");
    await join_(b);
    assert.equal(await dataOf(b, "only-b"), undefined);
    assert.ok(b.removed.includes("default/only-b"));
    // And live: a delete on b reaches a.
    await b.registry.remove({ user: "default", name: "newer-here" });
    await waitFor("a to remove newer-here", async () => (await dataOf(a, "newer-here")) === undefined);
  });

  it("a revision stamped in the future that a node refuses does not swallow that node's next deploy", async () => {
    const [a, b] = nodes as [Node, Node];
    const id = { user: "default", name: "stamped" };
    await a.registry.deploy(id, TOML, new Map([["main.wasm", Buffer.from("v1")]]));
    await waitFor("b to install v1", async () => (await dataOf(b, "stamped")) === "v1");
    // A record from a node with a fast clock, whose module every node refuses.
    const badDir = join(work, "bad");
    await onDisk(
      { ...a, registry: new DirectoryRegistry(badDir, { loader: sandboxKinds.loader }) },
      "stamped",
      "bad",
    );
    const bad = await readFunctionFiles(join(badDir, "stamped"));
    const kv = await new Kvm(a.nc).open(CLUSTER_BUCKETS.functions);
    const obj = await new Objm(a.nc).open(CLUSTER_BUCKETS.artefacts);
    await obj.putBlob({ name: `default.stamped@${bad.revision}` }, packFunction(bad));
    const future: SharedFunction = {
      function: "default/stamped",
      revision: bad.revision,
      artefact: `default.stamped@${bad.revision}`,
      deployedBy: "fast-clock",
      deployedAt: Date.now() + 3_600_000,
    };
    await kv.put("default.stamped", JSON.stringify(future));
    for (const n of [a, b])
      await waitFor(`${n.name} to refuse the record`, () =>
        n.logs.some((l) => l.includes("refused a function shared") && l.includes("stamped")),
      );
    // Both refuse it and keep v1; a deploy through a's API then goes live everywhere.
    await a.registry.deploy(id, TOML, new Map([["main.wasm", Buffer.from("v2")]]));
    await waitFor("b to install a's v2", async () => (await dataOf(b, "stamped")) === "v2");
    assert.equal((await record("stamped"))?.deployedBy, "a");
  });

  it("a restarted nats-server: the watch resumes and a deploy made after it reaches the other node", async () => {
    const [a, b] = nodes as [Node, Node];
    await nats.restart();
    const id = { user: "default", name: "after-restart" };
    // NATS may still be recovering: the deploy is local at once, and shared once NATS is back.
    await a.registry.deploy(id, TOML, new Map([["main.wasm", Buffer.from("back")]]));
    await waitFor("b to install after-restart", async () => (await dataOf(b, "after-restart")) === "back");
  });
});
