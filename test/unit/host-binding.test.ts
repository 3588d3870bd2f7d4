import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { connect, createServer, type Socket } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  encodeFrame,
  FrameDecoder,
  FrameType,
  GUEST_STREAM,
  GuestChannel,
} from "../../src/sandbox/guest-channel.js";
import { BINDING_MAX_BODY, CALL_ID_HEADER, HostBinding } from "../../src/sandbox/host-binding.js";
import { TestCalls } from "../helpers/call-host.js";
import { tempDir } from "../helpers/paths.js";

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One request to the binding at `socketPath`; `declared` sends a content-length without the body. */
function ask(
  socketPath: string,
  method: string,
  path: string,
  opts: { id?: string; body?: string; declared?: number } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = {
      "content-length": opts.declared ?? Buffer.byteLength(opts.body ?? ""),
    };
    if (opts.id) headers[CALL_ID_HEADER] = opts.id;
    const req = httpRequest({ socketPath, method, path, headers, agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on("error", reject);
    if (opts.declared === undefined) req.end(opts.body ?? "");
    else req.flushHeaders(); // the body never comes: the binding must answer on the header alone
  });
}

describe("host binding (the handler's way to Fennec)", () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let socketPath: string;
  let binding: HostBinding;
  const calls = new TestCalls(1);

  before(async () => {
    ({ dir, cleanup } = await tempDir());
    socketPath = join(dir, "fennec-host.sock");
    binding = await HostBinding.listen(socketPath, { sandboxUser: false });
  });
  after(async () => {
    await binding.close();
    await cleanup();
  });

  it("answers only for calls admitted to it, until they are released", async () => {
    const host = calls.host();
    assert.equal((await ask(socketPath, "PUT", "/v1/state/k", { id: host.callId, body: "v" })).status, 404);
    const release = binding.admit(host);
    const put = await ask(socketPath, "PUT", "/v1/state/k", { id: host.callId, body: "v" });
    assert.equal(put.status, 200, put.body);
    const got = await ask(socketPath, "GET", "/v1/state/k", { id: host.callId });
    assert.equal(got.body, "v");
    release();
    const after = await ask(socketPath, "GET", "/v1/state/k", { id: host.callId });
    assert.equal(after.status, 404);
    assert.equal(after.headers["x-fennec-error"], "CALL_NOT_FOUND");
    const none = await ask(socketPath, "GET", "/v1/state/k");
    assert.equal(none.headers["x-fennec-error"], "CALL_NOT_FOUND");
  });

  it("answers an absent key apart from an error, and keys with slashes whole", async () => {
    const host = calls.host();
    const release = binding.admit(host);
    try {
      const absent = await ask(socketPath, "GET", "/v1/state/nothing", { id: host.callId });
      assert.equal(absent.status, 404);
      assert.equal(absent.headers["x-fennec-state"], "absent");
      assert.equal(absent.headers["x-fennec-error"], undefined);
      const key = encodeURIComponent("a/b c");
      assert.equal(
        (await ask(socketPath, "PUT", `/v1/state/${key}`, { id: host.callId, body: "x" })).status,
        200,
      );
      assert.equal(Buffer.from(calls.state.get("a/b c")!).toString(), "x");
    } finally {
      release();
    }
  });

  it("refuses a body past its limit from the declared length, before it arrives", async () => {
    const host = calls.host();
    const release = binding.admit(host);
    try {
      const big = await ask(socketPath, "PUT", "/v1/state/big", {
        id: host.callId,
        declared: BINDING_MAX_BODY + 1,
      });
      assert.equal(big.status, 413);
      assert.equal(big.headers["x-fennec-error"], "BODY_TOO_LARGE");
      assert.equal(calls.state.has("big"), false);
    } finally {
      release();
    }
  });

  it("passes the call host's refusals on with their codes, and unknown routes as such", async () => {
    const host = calls.host(undefined, 1); // at the test's depth limit
    const release = binding.admit(host);
    try {
      const deep = await ask(socketPath, "POST", "/v1/chain/child", { id: host.callId });
      assert.equal(deep.status, 508);
      assert.deepEqual(JSON.parse(deep.body), { error: "CHAIN_TOO_DEEP", message: "depth 2" });
      const route = await ask(socketPath, "GET", "/v2/anything/x", { id: host.callId });
      assert.equal(route.headers["x-fennec-error"], "NOT_FOUND");
      const method = await ask(socketPath, "POST", "/v1/calls/x", { id: host.callId });
      assert.equal(method.headers["x-fennec-error"], "METHOD_NOT_ALLOWED");
      const offset = await ask(socketPath, "PATCH", "/v1/state/k?offset=-1", { id: host.callId, body: "x" });
      assert.equal(offset.headers["x-fennec-error"], "BAD_REQUEST");
    } finally {
      release();
    }
  });

  it("removes its socket when closed", async () => {
    const { dir: own, cleanup: done } = await tempDir();
    const path = join(own, "fennec-host.sock");
    const b = await HostBinding.listen(path, { sandboxUser: false });
    assert.ok(existsSync(path));
    await b.close();
    assert.ok(!existsSync(path));
    await done();
  });
});

describe("guest channel: streams the guest opens (CONNECT)", () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let guest: Socket;
  let channel: GuestChannel;
  const frames: Array<{ type: number; id: number; payload: string }> = [];
  const waiters: Array<() => void> = [];
  const next = (pred: (f: (typeof frames)[number]) => boolean) =>
    new Promise<(typeof frames)[number]>((resolve) => {
      const check = () => {
        const i = frames.findIndex(pred);
        if (i < 0) return false;
        resolve(frames.splice(i, 1)[0]!);
        return true;
      };
      const wait = () => void (check() || waiters.push(wait));
      wait();
    });

  before(async () => {
    ({ dir, cleanup } = await tempDir());
    const path = join(dir, "channel.sock");
    const listener = createServer();
    const accepted = new Promise<Socket>((r) => listener.once("connection", r));
    await new Promise<void>((r) => listener.listen(path, r));
    guest = connect(path);
    channel = new GuestChannel(await accepted, "test guest");
    listener.close();
    const decoder = new FrameDecoder();
    guest.on("data", (chunk: Buffer) =>
      decoder.push(chunk, (type, id, payload) => {
        frames.push({ type, id, payload: payload.toString() });
        for (const w of waiters.splice(0)) w();
      }),
    );
  });
  after(async () => {
    channel.close();
    guest.destroy();
    await cleanup();
  });

  it("refuses a guest stream while nothing serves them, and an id outside the guest's range", async () => {
    guest.write(encodeFrame(FrameType.CONNECT, GUEST_STREAM + 1));
    assert.equal((await next((f) => f.id === GUEST_STREAM + 1)).payload, "no binding");
    const binding = HostBinding.streams();
    channel.onGuestStream((s) => binding.accept(s));
    guest.write(encodeFrame(FrameType.CONNECT, 7));
    const refused = await next((f) => f.id === 7);
    assert.equal(refused.type, FrameType.CLOSE);
    assert.equal(refused.payload, "bad stream id");
  });

  it("carries the binding's HTTP over a stream the guest opened", async () => {
    const binding = HostBinding.streams();
    const calls = new TestCalls();
    const host = calls.host();
    binding.admit(host);
    calls.state.set("k", Buffer.from("from the host"));
    channel.onGuestStream((s) => binding.accept(s));
    const id = GUEST_STREAM + 2;
    guest.write(encodeFrame(FrameType.CONNECT, id));
    guest.write(
      encodeFrame(
        FrameType.DATA,
        id,
        Buffer.from(`GET /v1/state/k HTTP/1.1\r\nhost: fennec\r\n${CALL_ID_HEADER}: ${host.callId}\r\n\r\n`),
      ),
    );
    let text = "";
    while (!text.endsWith("from the host"))
      text += (await next((f) => f.id === id && f.type === FrameType.DATA)).payload;
    assert.match(text, /^HTTP\/1\.1 200 OK\r\n/);
    await binding.close();
    // Closing the binding ends the stream: the guest is told.
    assert.equal((await next((f) => f.id === id && f.type === FrameType.CLOSE)).type, FrameType.CLOSE);
  });
});
