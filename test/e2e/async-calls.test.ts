import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { promisify } from "node:util";
import { mkdir, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { errorCode, request, type Reply } from "../helpers/http.js";
import { openStore } from "../../src/store/open-store.js";
import { CLI, copyExamples, tempDir } from "../helpers/paths.js";
import { addWasmFunction, startTestServer, type TestServer } from "../helpers/server.js";
import { waitFor } from "../helpers/wait.js";
import { wagiModule } from "../helpers/wasm-writer.js";

/** A function that answers `output` (CGI headers, blank line, body) every time. */
async function addWagi(registry: string, name: string, output: string, toml = ""): Promise<void> {
  const dir = join(registry, name);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, "main.wasm"), wagiModule({ output }));
  await writeFile(
    join(dir, "function.toml"),
    `keepalive = 30\nconcurrent-requests = 1\n${toml}\n[wasm]\nmodule = "main.wasm"\nmemory = 16\n`,
  );
}

async function submit(url: string, path: string, init: RequestInit = {}): Promise<string> {
  const r = await request(`${url}${path}`, { method: "POST", ...init });
  assert.equal(r.status, 202, r.text);
  const { callId } = r.json<{ callId: string }>();
  assert.equal(r.headers.get("x-call-id"), callId);
  assert.equal(r.headers.get("location"), `/fa/calls/${callId}`);
  return callId;
}

/** Polls `GET /fa/calls/<id>` until it is no longer pending; `seen` collects the pending answers. */
async function result(url: string, callId: string, seen?: unknown[]): Promise<Reply> {
  return waitFor(`call ${callId} to end`, async () => {
    const r = await request(`${url}/fa/calls/${callId}`);
    if (r.status !== 202) return r;
    seen?.push(r.json());
    return undefined;
  });
}

/** A loopback server that records what it is sent and answers as `answer` says. */
async function callbackServer(answer: (req: IncomingMessage, body: string) => number | "hang"): Promise<{
  url: string;
  seen: Array<{ headers: IncomingMessage["headers"]; body: string }>;
  close(): Promise<void>;
}> {
  const seen: Array<{ headers: IncomingMessage["headers"]; body: string }> = [];
  const server: Server = createServer((req, res) => {
    let body = "";
    req.on("data", (c: Buffer) => (body += c.toString()));
    req.on("end", () => {
      seen.push({ headers: req.headers, body });
      const status = answer(req, body);
      if (status !== "hang") res.writeHead(status).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/hook`,
    seen,
    close: () => {
      server.closeAllConnections();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

describe("durable async calls (real server, real sockets, wasm functions)", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({
      bodyLimitBytes: 64 * 1024,
      callbacks: { allow: ["127.0.0.1"], attempts: 3, backoffMs: 50, timeoutMs: 500 },
    });
    const retry = '[async]\nattempts = 3\nbackoff = "1s"\nmax-backoff = "2s"';
    await addWasmFunction(s.registry, "poison", "trap.wasm", retry);
    await addWasmFunction(s.registry, "one", "sleep.wasm", "max-instances = 1\nqueue-timeout = 1");
    await addWasmFunction(s.registry, "aged", "sleep.wasm", 'max-instances = 1\n[async]\nmax-age = "500ms"');
    await addWagi(s.registry, "busy", "Status: 503\nContent-Type: text/plain\n\nbusy\n");
    await addWagi(
      s.registry,
      "busy-declared",
      "Status: 503\nContent-Type: text/plain\n\nbusy\n",
      '[async]\nattempts = 2\nbackoff = "50ms"\nretry-statuses = [503]',
    );
  });
  after(() => s.close());

  it("accepts a call with 202 and its id, then serves the function's answer", async () => {
    const id = await submit(s.url, "/fa/default/echo", {
      body: "later",
      headers: { "content-type": "text/x-later" },
    });
    const r = await result(s.url, id);
    assert.equal(r.status, 200);
    assert.equal(r.text, "later");
    assert.equal(r.headers.get("content-type"), "text/x-later");
    assert.equal(r.headers.get("x-call-id"), id);
    assert.equal(r.headers.get("x-fennec-call-state"), "succeeded");
    assert.equal(r.headers.get("x-fennec-call-attempt"), "1");
    // OpenFaaS's route reaches the same functions (default user), path included.
    const viaOpenFaas = await submit(s.url, "/async-function/echo/sub/path", { body: "openfaas" });
    assert.equal((await result(s.url, viaOpenFaas)).text, "openfaas");
    const unknown = await request(`${s.url}/fa/calls/00000000-0000-0000-0000-000000000000`);
    assert.equal(unknown.status, 404);
    assert.equal(errorCode(unknown), "CALL_NOT_FOUND");
    const missing = await request(`${s.url}/fa/default/nope`, { method: "POST", body: "x" });
    assert.equal(errorCode(missing), "FUNCTION_NOT_FOUND", "a call of no function is refused, not queued");
  });

  it("returns the first call's id for a resubmission with the same Idempotency-Key", async () => {
    const headers = { "idempotency-key": "order-42" };
    const first = await submit(s.url, "/fa/default/echo", { body: "once", headers });
    const again = await submit(s.url, "/fa/default/echo", { body: "twice?", headers });
    assert.equal(again, first);
    assert.equal((await result(s.url, first)).text, "once");
    const other = await submit(s.url, "/fa/default/echo", {
      body: "other",
      headers: { "idempotency-key": "order-43" },
    });
    assert.notEqual(other, first);
  });

  it("retries a poison call with backoff, dead-letters it after its attempts, and replays or deletes it", async () => {
    const id = await submit(s.url, "/fa/default/poison", { body: "" });
    const pending: Array<{
      state: string;
      attempt: number;
      notBefore?: number;
      lastError?: { code: string };
    }> = [];
    const dead = await result(s.url, id, pending);
    assert.equal(dead.status, 502);
    assert.equal(errorCode(dead), "FN_TRAP");
    assert.equal(dead.headers.get("x-fennec-call-state"), "dead");
    assert.equal(dead.headers.get("x-fennec-call-attempt"), "3", "three attempts, not more");
    // Between attempts the call waited queued, with its backoff's end and the last error.
    const backoff = pending.find((p) => p.state === "queued" && p.attempt >= 1);
    assert.ok(backoff, `a backoff was seen: ${JSON.stringify(pending)}`);
    assert.equal(backoff.lastError?.code, "FN_TRAP");
    assert.ok(backoff.notBefore !== undefined);
    const stats = (await request(`${s.url}/stats`)).json<{
      asyncCalls: Record<string, { dead: number; retries: number; deadLettered: number }>;
    }>();
    assert.deepEqual(
      { ...stats.asyncCalls["default/poison"], oldestQueuedAgeMs: 0 },
      { queued: 0, running: 0, dead: 1, oldestQueuedAgeMs: 0, retries: 2, requeued: 0, deadLettered: 1 },
    );
    const metrics = (await request(`${s.url}/metrics`)).text;
    assert.match(metrics, /fennec_async_dead\{function="default\/poison"\} 1/);
    assert.match(metrics, /fennec_async_calls_total\{function="default\/poison",event="retry"\} 2/);

    // Replay: dead -> queued from attempt 1, and dead again after three more attempts.
    const replayed = await request(`${s.url}/system/calls/${id}/replay`, { method: "POST" });
    assert.equal(replayed.status, 200, replayed.text);
    const again = await result(s.url, id);
    assert.equal(again.headers.get("x-fennec-call-state"), "dead");
    assert.equal(again.headers.get("x-fennec-call-attempt"), "3");
    const ok = await submit(s.url, "/fa/default/echo", { body: "fine" });
    await result(s.url, ok);
    const notDead = await request(`${s.url}/system/calls/${ok}/replay`, { method: "POST" });
    assert.equal(notDead.status, 409);
    assert.equal(errorCode(notDead), "CALL_STATE");

    const removed = await request(`${s.url}/system/calls/${id}`, { method: "DELETE" });
    assert.equal(removed.status, 200, removed.text);
    assert.equal(errorCode(await request(`${s.url}/fa/calls/${id}`)), "CALL_NOT_FOUND");
    assert.equal((await request(`${s.url}/system/calls/${id}`, { method: "DELETE" })).status, 404);
  });

  it("retries only the statuses a function declares retryable; any other status is its answer", async () => {
    const plain = await result(s.url, await submit(s.url, "/fa/default/busy"));
    assert.equal(plain.status, 503);
    assert.equal(plain.text, "busy\n");
    assert.equal(plain.headers.get("x-fennec-call-state"), "succeeded");
    assert.equal(plain.headers.get("x-fennec-call-attempt"), "1");
    const declared = await result(s.url, await submit(s.url, "/fa/default/busy-declared"));
    assert.equal(declared.headers.get("x-fennec-call-state"), "dead");
    assert.equal(declared.headers.get("x-fennec-call-attempt"), "2");
    assert.equal(errorCode(declared), "FN_RETRYABLE_STATUS");
  });

  it("dead-letters a call that waited past its max-age instead of running it", async () => {
    const slow = await submit(s.url, "/fa/default/aged?ms=1500");
    const late = await submit(s.url, "/fa/default/aged?ms=10");
    const r = await result(s.url, late);
    assert.equal(errorCode(r), "CALL_EXPIRED");
    assert.equal(r.status, 504);
    assert.equal(r.headers.get("x-fennec-call-state"), "dead");
    assert.equal(r.headers.get("x-fennec-call-attempt"), "1", "taken once, then found too old");
    assert.equal((await result(s.url, slow)).status, 200);
  });

  it("runs queued calls one at a time under max-instances = 1, never timing them out in the sync queue", async () => {
    // queue-timeout = 1 s: five calls of 600 ms waiting in the synchronous queue would time out.
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await submit(s.url, "/fa/default/one?ms=600"));
    let most = 0;
    const sampling = setInterval(() => {
      const pool = s.fennec.scheduler.pools().get("default/one");
      if (!pool) return;
      const busy = pool.instances.reduce((n, inst) => n + inst.active, 0);
      most = Math.max(most, busy, pool.instances.length);
    }, 5);
    try {
      for (const id of ids) {
        const r = await result(s.url, id);
        assert.equal(r.status, 200, r.text);
        assert.equal(r.text, "slept 600 ms\n");
      }
    } finally {
      clearInterval(sampling);
    }
    assert.equal(most, 1, "never more than one instance or call at once");
    const records = await Promise.all(ids.map((id) => s.fennec.store.get(id)));
    const spans = records.map((r) => [r!.startedAt!, r!.finishedAt!] as const).sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < spans.length; i++)
      assert.ok(
        spans[i]![0] >= spans[i - 1]![1],
        `call ${i} started after call ${i - 1} ended: ${JSON.stringify(spans)}`,
      );
  });

  it("refuses an oversized body with 413 and stores nothing", async () => {
    const before = (await s.fennec.store.list({ kind: "async", limit: 1000 })).length;
    const r = await request(`${s.url}/fa/default/echo`, { method: "POST", body: Buffer.alloc(65 * 1024, 1) });
    assert.equal(r.status, 413);
    assert.equal(errorCode(r), "BODY_TOO_LARGE");
    assert.equal((await s.fennec.store.list({ kind: "async", limit: 1000 })).length, before);
  });

  it("submits, replays and deletes from the command line", async () => {
    const cli = async (...args: string[]) => {
      const { FENNEC_TOKEN: _t, ...env } = process.env;
      try {
        const { stdout } = await promisify(execFile)(process.execPath, [CLI, ...args, "--url", s.url], {
          env,
        });
        return { code: 0, stdout };
      } catch (err) {
        const e = err as { code: number; stdout: string; stderr: string };
        return { code: e.code, stdout: e.stderr };
      }
    };
    const submitted = await cli("invoke", "echo", "--async", "-d", "from the cli");
    assert.equal(submitted.code, 0, submitted.stdout);
    const id = submitted.stdout.trim();
    assert.equal((await result(s.url, id)).text, "from the cli");
    const notDead = await cli("calls", "replay", id);
    assert.equal(notDead.code, 1);
    assert.match(notDead.stdout, /409: CALL_STATE/);
    const poison = (await cli("invoke", "poison", "--async")).stdout.trim();
    assert.equal((await result(s.url, poison)).headers.get("x-fennec-call-state"), "dead");
    assert.equal((await cli("calls", "replay", poison)).code, 0);
    assert.equal((await result(s.url, poison)).headers.get("x-fennec-call-state"), "dead");
    assert.equal((await cli("calls", "rm", poison)).code, 0);
    assert.equal(errorCode(await request(`${s.url}/fa/calls/${poison}`)), "CALL_NOT_FOUND");
    assert.equal((await cli("calls", "frob")).code, 2);
  });

  describe("callbacks", () => {
    it("POSTs the result with OpenFaaS's headers", async () => {
      const hook = await callbackServer(() => 200);
      try {
        const id = await submit(s.url, "/fa/default/echo", {
          body: "called back",
          headers: { "x-callback-url": hook.url, "content-type": "text/x-cb" },
        });
        await waitFor("the callback", () => hook.seen.length > 0);
        const { headers, body } = hook.seen[0]!;
        assert.equal(body, "called back");
        assert.equal(headers["x-call-id"], id);
        assert.equal(headers["x-function-status"], "200");
        assert.equal(headers["x-function-name"], "echo");
        assert.equal(headers["content-type"], "text/x-cb");
        assert.match(String(headers["x-duration-seconds"]), /^\d+\.\d+$/);
        // A dead call is called back too, with its error.
        await submit(s.url, "/fa/default/busy-declared", { headers: { "x-callback-url": hook.url } });
        await waitFor("the dead call's callback", () => hook.seen.length > 1);
        assert.equal(hook.seen[1]!.headers["x-function-status"], "502");
        assert.equal(hook.seen[1]!.headers["x-fennec-error"], "FN_RETRYABLE_STATUS");
      } finally {
        await hook.close();
      }
    });

    it("retries a callback server that is down, gives up after its attempts, and keeps the result", async () => {
      const hook = await callbackServer(() => 200);
      await hook.close(); // nothing listens there now
      const failedBefore = (await request(`${s.url}/stats`)).json<{ callbacks: { failed: number } }>()
        .callbacks.failed;
      const id = await submit(s.url, "/fa/default/echo", {
        body: "kept",
        headers: { "x-callback-url": hook.url },
      });
      assert.equal((await result(s.url, id)).text, "kept");
      await waitFor("the callback to be given up", async () => {
        const stats = (await request(`${s.url}/stats`)).json<{ callbacks: { failed: number } }>();
        return stats.callbacks.failed > failedBefore;
      });
      assert.equal((await result(s.url, id)).text, "kept", "the result is still there");
    });

    it("gives a slow callback server a deadline per attempt, retries, then gives up", async () => {
      const hook = await callbackServer(() => "hang");
      try {
        const failedBefore = (await request(`${s.url}/stats`)).json<{ callbacks: { failed: number } }>()
          .callbacks.failed;
        await submit(s.url, "/fa/default/echo", { body: "slow", headers: { "x-callback-url": hook.url } });
        await waitFor("the callback to be given up", async () => {
          const stats = (await request(`${s.url}/stats`)).json<{ callbacks: { failed: number } }>();
          return stats.callbacks.failed > failedBefore;
        });
        assert.equal(hook.seen.length, 3, "three attempts, each cut at its deadline");
      } finally {
        await hook.close();
      }
    });

    it("refuses a callback URL that is not http(s) or not on the allow-list, queueing nothing", async () => {
      const before = (await s.fennec.store.list({ kind: "async", limit: 1000 })).length;
      for (const url of [
        "ftp://127.0.0.1/x",
        "file:///etc/passwd",
        "not a url",
        "http://localhost:1/x",
        "http://10.0.0.1/x",
      ]) {
        const r = await request(`${s.url}/fa/default/echo`, {
          method: "POST",
          body: "x",
          headers: { "x-callback-url": url },
        });
        assert.equal(r.status, 400, url);
        assert.equal(errorCode(r), "CALLBACK_NOT_ALLOWED", url);
      }
      assert.equal((await s.fennec.store.list({ kind: "async", limit: 1000 })).length, before);
    });
  });
});

describe("async calls at a graceful stop", () => {
  it("lets the running call finish within the drain and leaves the queued ones queued", async () => {
    const s = await startTestServer();
    try {
      await addWasmFunction(s.registry, "nap", "sleep.wasm", "max-instances = 1");
      const running = await submit(s.url, "/fa/default/nap?ms=1500");
      const queued = await submit(s.url, "/fa/default/nap?ms=10");
      await waitFor("the long call to be running", async () => {
        const r = await request(`${s.url}/fa/calls/${running}`);
        return r.json<{ state: string }>().state === "running";
      });
      await s.fennec.close(30_000);
      // The store is closed with Fennec: open it again to see what it kept.
      const store = openStore(join(s.registry, ".fennec", "state"));
      try {
        assert.equal((await store.get(running))?.state, "succeeded");
        assert.equal(Buffer.from((await store.response(running))!.body).toString(), "slept 1500 ms\n");
        const left = await store.get(queued);
        assert.equal(left?.state, "queued");
        assert.equal(left?.attempt, 0);
      } finally {
        await store.close();
      }
    } finally {
      await s.close();
    }
  });
});

describe("async calls cut at the end of the drain", () => {
  it("puts a call still running when the drain ends back in the queue, its attempt given back", async () => {
    const s = await startTestServer();
    try {
      await addWasmFunction(s.registry, "nap", "sleep.wasm", "max-instances = 1");
      const cut = await submit(s.url, "/fa/default/nap?ms=5000");
      await waitFor("the call to be running in its instance", async () => {
        const stats = (await request(`${s.url}/stats`)).json<{
          instances: Record<string, { busy: number }>;
        }>();
        return (stats.instances["default/nap"]?.busy ?? 0) > 0;
      });
      await s.fennec.close(100);
      const store = openStore(join(s.registry, ".fennec", "state"));
      try {
        const left = await store.get(cut);
        assert.equal(left?.state, "queued", JSON.stringify(left));
        assert.equal(left?.attempt, 0, "the cut attempt is not counted against the function");
      } finally {
        await store.close();
      }
    } finally {
      await s.close();
    }
  });
});

describe("async calls across a SIGKILL of Fennec", () => {
  let root: { dir: string; cleanup: () => Promise<void> };
  let child: ChildProcess | undefined;
  before(async () => {
    root = await tempDir();
  });
  after(async () => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await root.cleanup();
  });

  function serve(registry: string, ...args: string[]): Promise<{ child: ChildProcess; url: string }> {
    const c = spawn(process.execPath, [CLI, "serve", "-r", registry, "--port", "0", ...args], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let log = "";
    return new Promise((resolve, reject) => {
      c.stderr.on("data", (d: Buffer) => {
        log += d.toString();
        const m = /on (http:\/\/127\.0\.0\.1:\d+)/.exec(log);
        if (m) resolve({ child: c, url: m[1]! });
      });
      c.once("exit", (code) => reject(new Error(`fennec serve exited early (${code}): ${log}`)));
    });
  }

  it("loses no queued call, and runs the one that was running again", async () => {
    const registry = await copyExamples(root.dir);
    await addWasmFunction(registry, "nap", "sleep.wasm", "max-instances = 1");
    const first = await serve(registry);
    child = first.child;
    const running = await submit(first.url, "/fa/default/nap?ms=4000");
    const queued = [
      await submit(first.url, "/fa/default/nap?ms=10"),
      await submit(first.url, "/fa/default/nap?ms=20"),
    ];
    await waitFor("the long call to be running in its instance", async () => {
      const stats = (await request(`${first.url}/stats`)).json<{
        instances: Record<string, { busy: number }>;
      }>();
      return (stats.instances["default/nap"]?.busy ?? 0) > 0;
    });
    assert.equal(
      (await request(`${first.url}/fa/calls/${queued[1]}`)).json<{ state: string }>().state,
      "queued",
    );
    const gone = new Promise((r) => first.child.once("exit", r));
    first.child.kill("SIGKILL");
    await gone;

    const second = await serve(registry);
    child = second.child;
    const again = await result(second.url, running);
    assert.equal(again.status, 200, again.text);
    assert.equal(again.text, "slept 4000 ms\n");
    assert.equal(again.headers.get("x-fennec-call-attempt"), "2", "it ran again after the restart");
    for (const [i, id] of queued.entries()) {
      const r = await result(second.url, id);
      assert.equal(r.text, `slept ${(i + 1) * 10} ms\n`);
      assert.equal(r.headers.get("x-fennec-call-attempt"), "1");
    }
    second.child.kill("SIGTERM");
    await new Promise((r) => second.child.once("exit", r));
  });

  it("sends a callback still pending when Fennec was killed after the restart", async () => {
    const registry = await copyExamples(join(root.dir, "callback"));
    await addWasmFunction(registry, "nap", "sleep.wasm");
    // The receiver is down (503, retried) until the first Fennec is gone, then takes the POST.
    let up = false;
    const hook = await callbackServer(() => (up ? 200 : 503));
    try {
      const first = await serve(registry, "--callback-allow", "127.0.0.1");
      child = first.child;
      const id = await submit(first.url, "/fa/default/nap?ms=5", { headers: { "x-callback-url": hook.url } });
      assert.equal((await result(first.url, id)).text, "slept 5 ms\n");
      await waitFor("a delivery attempt to be refused", () => hook.seen.length > 0);
      const before = (await request(`${first.url}/system/calls/${id}`)).json<{ callbackState?: string }>();
      assert.equal(before.callbackState, "pending", "refused once, retried after a backoff");
      const gone = new Promise((r) => first.child.once("exit", r));
      first.child.kill("SIGKILL");
      await gone;

      up = true;
      const refused = hook.seen.length;
      const second = await serve(registry, "--callback-allow", "127.0.0.1");
      child = second.child;
      await waitFor("the callback after the restart", () => hook.seen.length > refused);
      const sent = hook.seen[refused]!;
      assert.equal(sent.headers["x-call-id"], id);
      assert.equal(sent.headers["x-function-status"], "200");
      assert.equal(sent.headers["x-fennec-call-state"], "succeeded");
      assert.equal(sent.body, "slept 5 ms\n");
      await waitFor("the delivery to be recorded", async () => {
        const r = (await request(`${second.url}/system/calls/${id}`)).json<{ callbackState?: string }>();
        return r.callbackState === "delivered";
      });
      second.child.kill("SIGTERM");
      await new Promise((r) => second.child.once("exit", r));
      assert.equal(hook.seen.length, refused + 1, "delivered once after the restart");
    } finally {
      await hook.close();
    }
  });
});
