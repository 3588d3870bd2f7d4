import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { writeFile } from "node:fs/promises";
import { request as httpRequest, type IncomingMessage } from "node:http";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, afterEach, before, describe, it } from "node:test";
import { FORWARDED_BY_HEADER, NODE_HEADER } from "../../src/cluster/contract.js";
import { FORWARD_AUTH_HEADER, ForwardAuth } from "../../src/cluster/forward-auth.js";
import { FakeView, nodeInfo } from "../helpers/fake-view.js";
import { tempDir } from "../helpers/paths.js";
import { rawRequest, startTestServer, type TestServer } from "../helpers/server.js";
import { waitFor } from "../helpers/wait.js";

/**
 * The other node, as a separate process a test can SIGKILL: an HTTP server that tells the test
 * (one JSON line on stdout) what each request looked like when it arrived, and then `echo`es the
 * body back as it comes, `hang`s (reads the body, never answers; tells when the connection is
 * closed on it: `gone`), answers `half` of a 1000-byte body and waits (tells: `half`), or
 * `refuse`s at once with a small 413, its body unread.
 */
const REMOTE = `
import { createServer } from "node:http";
const server = createServer((req, res) => {
  const mode = ["hang", "half", "refuse"].find((m) => req.url.includes(m)) ?? "echo";
  const tell = (event) => process.stdout.write(JSON.stringify({ event, url: req.url }) + "\\n");
  process.stdout.write(JSON.stringify({ event: "request", url: req.url, headers: req.headers }) + "\\n");
  let told = false;
  req.on("data", () => {
    if (!told) tell("body");
    told = true;
  });
  res.on("close", () => {
    if (!res.writableFinished) tell("gone");
  });
  if (mode === "hang") return void req.resume();
  if (mode === "refuse") return void res.writeHead(413, { "content-length": "7" }).end("refused");
  if (mode === "half") {
    req.resume();
    res.writeHead(200, { "content-type": "text/plain", "content-length": "1000" });
    res.write("h".repeat(500), () => tell("half"));
    return;
  }
  res.writeHead(200, {
    "content-type": "application/octet-stream",
    "x-fennec-node": "b",
    "x-fennec-start": "warm",
    "x-call-id": "not-the-remote's-to-change",
    connection: "keep-alive, x-hop",
    "x-hop": "one hop only",
    // The answer's length is the request's: a small one may be read whole on the way back.
    ...(req.headers["content-length"] ? { "content-length": req.headers["content-length"] } : {}),
  });
  req.pipe(res);
});
server.listen(0, "127.0.0.1", () => process.stdout.write(JSON.stringify({ event: "port", port: server.address().port }) + "\\n"));
`;

interface Remote {
  readonly child: ChildProcess;
  readonly url: string;
  /** Resolves with the next line of `event`. */
  next(event: string): Promise<Record<string, unknown>>;
}

async function startRemote(dir: string): Promise<Remote> {
  const script = join(dir, "remote.mjs");
  await writeFile(script, REMOTE);
  const child = spawn(process.execPath, [script], { stdio: ["ignore", "pipe", "inherit"] });
  const lines: Array<Record<string, unknown>> = [];
  const waiting: Array<{ event: string; resolve: (v: Record<string, unknown>) => void }> = [];
  createInterface({ input: child.stdout }).on("line", (line) => {
    const msg = JSON.parse(line) as Record<string, unknown>;
    const i = waiting.findIndex((w) => w.event === msg.event);
    if (i >= 0) waiting.splice(i, 1)[0]!.resolve(msg);
    else lines.push(msg);
  });
  const next = (event: string) =>
    new Promise<Record<string, unknown>>((resolve) => {
      const i = lines.findIndex((l) => l.event === event);
      if (i >= 0) resolve(lines.splice(i, 1)[0]!);
      else waiting.push({ event, resolve });
    });
  const { port } = (await next("port")) as { port: number };
  return { child, url: `http://127.0.0.1:${port}`, next };
}

/** A streamed POST: the caller writes the body; resolves with the response once its head is in. */
function streamingPost(base: string, path: string, headers: Record<string, string> = {}) {
  const u = new URL(base);
  const req = httpRequest({ host: u.hostname, port: u.port, method: "POST", path, headers });
  const response = new Promise<IncomingMessage>((resolve, reject) => {
    req.once("response", resolve);
    req.once("error", reject);
  });
  req.flushHeaders();
  return { req, response };
}

/** `p`, or a failure naming `what` after 60 s (a busy machine's generous deadline). */
function within<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`waited 60 s for ${what}`)), 60_000);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

async function readAll(res: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** The cluster's forwarding key, as every node would read it from NATS. */
const KEY = randomBytes(32);

describe("forwarding a call to another node (a gateway and a remote node, real sockets)", () => {
  let server: TestServer;
  let view: FakeView;
  let remote: Remote;
  let dir: string;
  let cleanup: () => Promise<void>;
  const extra: ChildProcess[] = [];

  before(async () => {
    ({ dir, cleanup } = await tempDir());
    remote = await startRemote(dir);
    // This node has no wasm sandbox: every call of a wasm function goes to b.
    view = new FakeView("a", [
      nodeInfo("a", "http://127.0.0.1:1", { sandboxes: [] }),
      nodeInfo("b", remote.url),
    ]);
    server = await startTestServer({ clusterView: view, node: "a", token: "admin-secret", clusterKey: KEY });
    view.set(nodeInfo("a", server.url, { sandboxes: [] }));
  });

  afterEach(() => {
    view.set(nodeInfo("a", server.url, { sandboxes: [] }));
    if (!view.node("b")) view.set(nodeInfo("b", remote.url));
  });

  after(async () => {
    await server?.close();
    for (const c of [remote?.child, ...extra])
      if (c && c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    await cleanup?.();
  });

  it("streams a large body both ways, chunk by chunk, with the call's ids, without credentials or one hop's headers", async () => {
    const { req, response } = streamingPost(server.url, "/invoke/echo/some/path?q=1", {
      authorization: "Bearer admin-secret",
      cookie: "session=1",
      "x-request-id": "req-123",
      "x-custom": "kept",
      "proxy-connection": "keep-alive",
      "transfer-encoding": "chunked",
    });
    // undici sends a streamed body's head with its first chunk.
    const sent = createHash("sha256");
    const got = createHash("sha256");
    const first = randomBytes(1 << 20);
    sent.update(first);
    req.write(first);
    const arrived = (await remote.next("request")) as { url: string; headers: Record<string, string> };
    assert.equal(arrived.url, "/invoke/echo/some/path?q=1");
    assert.equal(arrived.headers[FORWARDED_BY_HEADER], "a");
    assert.equal(arrived.headers["x-fennec-placement"], "home");
    assert.equal(arrived.headers["x-request-id"], "req-123");
    assert.match(arrived.headers["x-call-id"]!, /^[0-9a-f-]{36}$/);
    assert.equal(arrived.headers["x-custom"], "kept");
    // Signed with the cluster's key, for b: b can check it came from a.
    assert.equal(
      new ForwardAuth(KEY).check(
        {
          from: "a",
          to: "b",
          callId: arrived.headers["x-call-id"]!,
          requestId: "req-123",
          placement: "home",
          method: "POST",
          url: "/invoke/echo/some/path?q=1",
        },
        arrived.headers[FORWARD_AUTH_HEADER],
      ),
      undefined,
    );
    // The admin token (and any credential) reaches another node only for a function that takes them.
    assert.equal(arrived.headers.authorization, undefined);
    assert.equal(arrived.headers.cookie, undefined);
    assert.equal(arrived.headers["proxy-connection"], undefined);
    assert.notEqual(arrived.headers.host, new URL(server.url).host);

    // 32 MiB in 1 MiB chunks: each chunk comes back before the next is sent, so neither side
    // holds the body (it would deadlock here if the gateway read it whole in either direction).
    const res = await response;
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers[NODE_HEADER], "b", "the remote's x-fennec-node passes through");
    assert.equal(res.headers["x-fennec-start"], "warm");
    assert.equal(res.headers["x-request-id"], "req-123");
    assert.equal(
      res.headers["x-call-id"],
      arrived.headers["x-call-id"],
      "the call id is the one the remote ran it under",
    );
    assert.equal(res.headers["x-hop"], undefined, "a header the remote's Connection names is not passed on");
    let received = 0;
    let expected = 1 << 20;
    res.on("data", (c: Buffer) => {
      got.update(c);
      received += c.length;
    });
    const ended = once(res, "end");
    for (let i = 1; i < 32; i++) {
      await waitFor(`chunk ${i} echoed`, () => received >= expected, { intervalMs: 5 });
      const chunk = randomBytes(1 << 20);
      sent.update(chunk);
      req.write(chunk);
      expected += chunk.length;
    }
    req.end();
    await ended;
    assert.equal(received, 32 << 20);
    assert.equal(got.digest("hex"), sent.digest("hex"));
  });

  it("answers 502 NODE_LOST at once when the node is killed before it answered, records where the call was, and sends new calls elsewhere", async () => {
    // A node of its own, to kill.
    const doomed = await startRemote(dir);
    extra.push(doomed.child);
    view.set(nodeInfo("a", server.url, { sandboxes: ["wasm"] }));
    // c is warm for echo: placement picks it over this node's home.
    view.set(nodeInfo("c", doomed.url, { functions: { "default/echo": { freeSlots: 4 } } }));
    try {
      const { req, response } = streamingPost(server.url, "/invoke/echo/hang", {
        "content-length": String(1 << 20),
      });
      req.on("error", () => undefined);
      req.write(Buffer.alloc(64 * 1024));
      await doomed.next("body");
      const t0 = Date.now();
      doomed.child.kill("SIGKILL");
      const res = await response;
      const took = Date.now() - t0;
      const body = JSON.parse((await readAll(res)).toString()) as { error: { code: string } };
      assert.equal(res.statusCode, 502);
      assert.equal(body.error.code, "NODE_LOST");
      assert.ok(took < 10_000, `NODE_LOST after ${took} ms`);
      const callId = String(res.headers["x-call-id"]);
      // The entry node's record says where the call was and that the node was lost.
      const record = await waitFor("the lost call's record", async () => {
        await server.fennec.store.flush();
        return server.fennec.store.get(callId);
      });
      assert.equal(record.node, "c");
      assert.equal(record.via, "a");
      assert.equal(record.placement, "warm");
      assert.equal(record.errorCode, "NODE_LOST");

      // c is still in the view (its heartbeats have not timed out), but refuses connections: the
      // next call is placed again at once, here, and so is every one after it.
      for (const text of ["hello", "again"]) {
        const next = await rawRequest(server.url, "POST", "/invoke/echo", text);
        assert.equal(next.status, 200, next.text);
        assert.equal(next.text, text);
        assert.equal(next.headers[NODE_HEADER], "a");
      }
    } finally {
      view.remove("c");
    }
  });

  it("cuts the response at once when the node is killed mid-body, after its answer began", async () => {
    const doomed = await startRemote(dir);
    extra.push(doomed.child);
    view.set(nodeInfo("d", doomed.url, { functions: { "default/echo": { freeSlots: 4 } } }));
    try {
      const { req, response } = streamingPost(server.url, "/invoke/echo", {
        "content-length": String(8 << 20),
      });
      req.on("error", () => undefined);
      req.write(Buffer.alloc(1 << 20));
      const res = await response;
      assert.equal(res.statusCode, 200);
      assert.equal(res.headers[NODE_HEADER], "b");
      let received = 0;
      res.on("data", (c: Buffer) => (received += c.length));
      const ended = new Promise<string>((resolve) => {
        res.once("end", () => resolve("end"));
        res.once("error", () => resolve("error"));
        res.once("aborted", () => resolve("aborted"));
      });
      await waitFor("the first MiB echoed", () => received >= 1 << 20);
      const t0 = Date.now();
      doomed.child.kill("SIGKILL");
      const how = await ended;
      assert.notEqual(how, "end", "a cut response must not look complete");
      assert.ok(Date.now() - t0 < 10_000);
      assert.ok(received < 8 << 20);
      const record = await waitFor("the cut call's record", async () => {
        await server.fennec.store.flush();
        return server.fennec.store.get(String(res.headers["x-call-id"]));
      });
      assert.equal(record.errorCode, "NODE_LOST");
      assert.equal(record.status, 200);
    } finally {
      view.remove("d");
    }
  });

  it("fails a call with NODE_LOST as soon as membership says its node left (no reset: a partition)", async () => {
    // A streamed body (over 64 KiB), so the call reaches the node before its body is all sent.
    const { req, response } = streamingPost(server.url, "/invoke/echo/hang", {
      "content-length": String(1 << 20),
    });
    req.on("error", () => undefined);
    req.write("12345");
    await remote.next("request");
    await remote.next("body");
    const t0 = Date.now();
    view.remove("b");
    const res = await response;
    const body = JSON.parse((await readAll(res)).toString()) as {
      error: { code: string; message: string };
    };
    assert.equal(res.statusCode, 502);
    assert.equal(body.error.code, "NODE_LOST");
    assert.match(body.error.message, /left the cluster/);
    assert.ok(Date.now() - t0 < 10_000);
  });

  it("sends a small body whole and reads a small answer whole: both arrive intact, and a node lost mid-answer is 502 NODE_LOST, not a cut 200", async () => {
    const doomed = await startRemote(dir);
    extra.push(doomed.child);
    view.set(nodeInfo("e", doomed.url, { functions: { "default/echo": { freeSlots: 4 } } }));
    try {
      const small = randomBytes(2000).toString("hex");
      const res = await rawRequest(server.url, "POST", "/invoke/echo/small", small);
      assert.equal(res.status, 200, res.text);
      assert.equal(res.text, small);
      assert.equal(res.headers["content-length"], "4000");
      const arrived = (await doomed.next("request")) as { headers: Record<string, string> };
      assert.equal(arrived.headers["content-length"], "4000");
      assert.equal(arrived.headers["transfer-encoding"], undefined);

      // The node dies with half of a small answer sent: nothing of it has reached the client yet.
      const { req, response } = streamingPost(server.url, "/invoke/echo/half", { "content-length": "1" });
      req.end("x");
      await doomed.next("half");
      doomed.child.kill("SIGKILL");
      const lost = await response;
      assert.equal(lost.statusCode, 502, "no head of the answer had been sent");
      assert.equal(lost.headers["x-fennec-error"], "NODE_LOST");
      assert.equal(lost.headers[NODE_HEADER], "a");
      const body = JSON.parse((await readAll(lost)).toString()) as { error: { code: string } };
      assert.equal(body.error.code, "NODE_LOST");
    } finally {
      view.remove("e");
    }
  });

  it("closes the call on the node when the client goes away, for a small body and a streamed one", async () => {
    const other = await startRemote(dir);
    extra.push(other.child);
    view.set(nodeInfo("f", other.url, { functions: { "default/echo": { freeSlots: 4 } } }));
    try {
      const cases: Array<[string, string, Buffer]> = [
        ["/invoke/echo/hang-small", "5", Buffer.from("12345")],
        ["/invoke/echo/hang-streamed", String(1 << 20), Buffer.alloc(64 * 1024)],
      ];
      for (const [path, length, chunk] of cases) {
        const { req, response } = streamingPost(server.url, path, { "content-length": length });
        req.on("error", () => undefined);
        response.catch(() => undefined);
        req.write(chunk);
        assert.equal((await other.next("body")).url, path);
        req.destroy();
        const gone = await within(other.next("gone"), `the node to see ${path} closed`);
        assert.equal(gone.url, path);
      }
    } finally {
      view.remove("f");
    }
  });

  it("closes the client's connection after a small answer that came before its streamed body was all sent", async () => {
    const { req, response } = streamingPost(server.url, "/invoke/echo/refuse", {
      "content-length": String(1 << 20),
    });
    req.on("error", () => undefined);
    req.write(Buffer.alloc(64 * 1024));
    const res = await response;
    assert.equal(res.statusCode, 413);
    assert.equal((await readAll(res)).toString(), "refused");
    // The rest of the body is not read: the connection is not reused with a body half read.
    await waitFor("the client's connection closed", () => req.socket?.destroyed === true);
  });

  it("serves a call another node forwarded here, never forwarding it again, under the call id it came with", async () => {
    // This node has wasm now, but b is warm: a client's call would go to b; a forwarded one stays.
    view.set(nodeInfo("a", server.url, { sandboxes: ["wasm"] }));
    view.set(nodeInfo("b", remote.url, { functions: { "default/echo": { freeSlots: 4 } } }));
    const callId = "0190f0a0-0000-7000-8000-000000000001";
    const signature = new ForwardAuth(KEY).sign({
      from: "z",
      to: "a",
      callId,
      requestId: "req-fwd",
      placement: "home",
      method: "POST",
      url: "/invoke/echo",
    });
    const res = await rawRequest(server.url, "POST", "/invoke/echo", "local", {
      [FORWARDED_BY_HEADER]: "z",
      "x-fennec-placement": "home",
      "x-call-id": callId,
      "x-request-id": "req-fwd",
      [FORWARD_AUTH_HEADER]: signature,
    });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.text, "local");
    assert.equal(res.headers[NODE_HEADER], "a");
    assert.equal(res.headers["x-call-id"], callId);
    const record = await waitFor("the forwarded call's record", async () => {
      await server.fennec.store.flush();
      return server.fennec.store.get(callId);
    });
    assert.equal(record.node, "a");
    assert.equal(record.via, "z");
    assert.equal(record.placement, "home");
    assert.equal(record.state, "succeeded");
  });

  it("refuses (403 FORWARD_UNAUTHENTICATED) forwarding headers without a valid signature: a client cannot pin a call, choose its id or forge its record", async () => {
    view.set(nodeInfo("a", server.url, { sandboxes: ["wasm"] }));
    view.set(nodeInfo("b", remote.url, { functions: { "default/echo": { freeSlots: 4 } } }));
    const callId = "0190f0a0-0000-7000-8000-0000000000f0";
    const fields = {
      from: "z",
      to: "a",
      callId,
      requestId: "req-forged",
      placement: "home",
      method: "POST",
      url: "/invoke/echo",
    };
    const forged = {
      [FORWARDED_BY_HEADER]: "z",
      "x-fennec-placement": "home",
      "x-call-id": callId,
      "x-request-id": "req-forged",
    };
    const cases: Array<[string, Record<string, string>, RegExp]> = [
      ["no signature", forged, /no signature/],
      [
        "another cluster's key",
        { ...forged, [FORWARD_AUTH_HEADER]: new ForwardAuth(randomBytes(32)).sign(fields) },
        /not the cluster's/,
      ],
      [
        "signed for another node",
        { ...forged, [FORWARD_AUTH_HEADER]: new ForwardAuth(KEY).sign({ ...fields, to: "b" }) },
        /not the cluster's/,
      ],
      [
        "signed for another call id",
        {
          ...forged,
          [FORWARD_AUTH_HEADER]: new ForwardAuth(KEY).sign({
            ...fields,
            callId: "0190f0a0-0000-7000-8000-0000000000f1",
          }),
        },
        /not the cluster's/,
      ],
      [
        "expired",
        { ...forged, [FORWARD_AUTH_HEADER]: new ForwardAuth(KEY).sign(fields, Date.now() - 120_000) },
        /clocks in sync/,
      ],
      ["only a placement header", { "x-fennec-placement": "warm" }, /no signature/],
    ];
    for (const [what, headers, why] of cases) {
      const res = await rawRequest(server.url, "POST", "/invoke/echo", "forged", headers);
      assert.equal(res.status, 403, `${what}: ${res.text}`);
      assert.equal(res.headers["x-fennec-error"], "FORWARD_UNAUTHENTICATED", what);
      assert.match(res.text, why, what);
      assert.notEqual(res.headers["x-call-id"], callId, what);
    }
    // A signature is good once: the same request again is a replay.
    const once = { ...forged, [FORWARD_AUTH_HEADER]: new ForwardAuth(KEY).sign(fields) };
    assert.equal((await rawRequest(server.url, "POST", "/invoke/echo", "x", once)).status, 200);
    const again = await rawRequest(server.url, "POST", "/invoke/echo", "x", once);
    assert.equal(again.status, 403);
    assert.match(again.text, /used already/);
    // Nothing ran, nothing was recorded under the forged id but the one signed call.
    await server.fennec.store.flush();
    const records = await server.fennec.store.list({ limit: 1000 });
    assert.equal(records.filter((r) => r.id === callId).length, 1);
    // A client's call with no forwarding headers but its own x-call-id gets an id of Fennec's.
    const plain = await rawRequest(server.url, "POST", "/invoke/echo", "x", { "x-call-id": callId });
    assert.notEqual(plain.headers["x-call-id"], callId);
  });

  it("answers NO_NODE_FOR_SANDBOX (409) when no live node has the function's sandbox", async () => {
    view.remove("b");
    const res = await rawRequest(server.url, "POST", "/invoke/echo", "x");
    assert.equal(res.status, 409);
    assert.equal(res.headers["x-fennec-error"], "NO_NODE_FOR_SANDBOX");
  });
});
