import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { request, type Reply } from "../helpers/http.js";
import { startNats, type TestNats } from "../helpers/nats.js";
import { CLI, copyExamples, tempDir } from "../helpers/paths.js";
import { addWasmFunction } from "../helpers/server.js";
import { waitFor } from "../helpers/wait.js";

/** A `fennec serve --cluster` process with its own registry copy, state dir and run dir. */
interface Node {
  readonly name: string;
  readonly url: string;
  readonly child: ChildProcess;
  log(): string;
}

async function submit(url: string, path: string): Promise<string> {
  const r = await request(`${url}${path}`, { method: "POST" });
  assert.equal(r.status, 202, r.text);
  return r.json<{ callId: string }>().callId;
}

/** Polls `GET /fa/calls/<id>` until the call has ended. */
function result(url: string, callId: string, timeoutMs = 120_000): Promise<Reply> {
  return waitFor(
    `call ${callId} to end`,
    async () => {
      const r = await request(`${url}/fa/calls/${callId}`);
      return r.status === 202 ? undefined : r;
    },
    { timeoutMs, intervalMs: 100 },
  );
}

describe("async calls on two nodes sharing the JetStream store", () => {
  let nats: TestNats;
  let root: { dir: string; cleanup: () => Promise<void> };
  const children = new Set<ChildProcess>();
  before(async () => {
    nats = await startNats();
    root = await tempDir("fennec-cluster-store-");
  });
  after(async () => {
    for (const c of children) {
      if (c.exitCode !== null || c.signalCode !== null) continue;
      const gone = new Promise((r) => c.once("exit", r));
      c.kill("SIGKILL");
      await gone;
    }
    await nats.stop();
    await root.cleanup();
  });

  async function serve(name: string, tag: string): Promise<Node> {
    const dir = join(root.dir, `${tag}-${name}`);
    await mkdir(dir, { recursive: true });
    const registry = await copyExamples(dir);
    await addWasmFunction(registry, "nap", "sleep.wasm", "max-instances = 1");
    const c = spawn(
      process.execPath,
      [
        CLI,
        "serve",
        "-r",
        registry,
        "--port",
        "0",
        "--state-dir",
        join(dir, "state"),
        "--cluster",
        nats.url,
        "--node",
        name,
      ],
      { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, FENNEC_RUN_DIR: join(dir, "run") } },
    );
    children.add(c);
    let log = "";
    return new Promise((resolve, reject) => {
      c.stderr.on("data", (d: Buffer) => {
        log += d.toString();
        const m = /on (http:\/\/127\.0\.0\.1:\d+)/.exec(log);
        if (m) resolve({ name, url: m[1]!, child: c, log: () => log });
      });
      c.once("exit", (code) => reject(new Error(`fennec serve ${name} exited early (${code}): ${log}`)));
    });
  }

  async function stop(node: Node, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    if (node.child.exitCode !== null || node.child.signalCode !== null) return;
    const gone = new Promise((r) => node.child.once("exit", r));
    node.child.kill(signal);
    await gone;
  }

  it("runs a call accepted by one node and serves its result from the other", async () => {
    const a = await serve("a", "one");
    const b = await serve("b", "one");
    try {
      const ids = [];
      for (let i = 0; i < 4; i++) ids.push(await submit(a.url, `/fa/default/nap?ms=${i + 1}`));
      for (const [i, id] of ids.entries()) {
        const r = await result(b.url, id);
        assert.equal(r.status, 200, r.text);
        assert.equal(r.text, `slept ${i + 1} ms\n`);
      }
      const listed = await request(`${b.url}/system/calls/${ids[0]}`);
      assert.equal(listed.json<{ state: string }>().state, "succeeded");
    } finally {
      await stop(a);
      await stop(b);
    }
  });

  it("runs the call of a node killed mid-call on the other, losing no accepted call", async () => {
    // A alone first: it leases the long call (and, at one instance, leaves the others queued).
    const a = await serve("a", "kill");
    const long = await submit(a.url, "/fa/default/nap?ms=3000");
    await waitFor("the long call to run on A", async () => {
      const r = await request(`${a.url}/system/calls/${long}`);
      return r.json<{ state: string }>().state === "running";
    });
    const queued = [];
    for (let i = 0; i < 5; i++) queued.push(await submit(a.url, `/fa/default/nap?ms=${10 + i}`));
    await stop(a, "SIGKILL");

    const b = await serve("b", "kill");
    try {
      // B sees A leave (its heartbeats stopped: the TTL) and takes its call back; B runs it again,
      // and every queued one.
      const again = await result(b.url, long);
      assert.equal(again.status, 200, again.text);
      assert.equal(again.text, "slept 3000 ms\n");
      assert.equal(again.headers.get("x-fennec-call-attempt"), "2", "redelivered: a second attempt");
      let duplicates = 0;
      for (const [i, id] of queued.entries()) {
        const r = await result(b.url, id);
        assert.equal(r.text, `slept ${10 + i} ms\n`);
        if (r.headers.get("x-fennec-call-attempt") !== "1") duplicates++;
      }
      assert.equal(duplicates, 0, "only the call that was running when A died ran twice");
    } finally {
      await stop(b);
    }
  });

  it("loses no accepted call when nats-server restarts under load", async () => {
    const a = await serve("a", "restart");
    const b = await serve("b", "restart");
    try {
      const accepted: string[] = [];
      let refused = 0;
      let stopSubmitting = false;
      const load = (async () => {
        for (let i = 0; !stopSubmitting; i++) {
          const node = i % 2 === 0 ? a : b;
          const r = await request(`${node.url}/fa/default/nap?ms=1`, { method: "POST" }).catch(
            () => undefined,
          );
          if (r?.status === 202) accepted.push(r.json<{ callId: string }>().callId);
          else refused++;
        }
      })();
      await waitFor("calls accepted before the restart", () => accepted.length >= 20);
      await nats.restart();
      const atRestart = accepted.length;
      await waitFor("calls accepted after the restart", () => accepted.length >= atRestart + 20);
      stopSubmitting = true;
      await load;
      for (const id of accepted) {
        const r = await result(b.url, id);
        assert.equal(r.status, 200, `${id}: ${r.text}`);
      }
      assert.ok(accepted.length >= 40, `accepted ${accepted.length}, refused ${refused}`);
    } finally {
      await stop(a);
      await stop(b);
    }
  });
});
