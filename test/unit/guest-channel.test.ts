import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import { connect, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  encodeFrame,
  FrameDecoder,
  FrameType,
  GuestChannel,
  MAX_PAYLOAD,
} from "../../src/sandbox/guest-channel.js";
import { channels, type LogLineEvent } from "../../src/core/events.js";
import { InstanceLog } from "../../src/sandbox/call-log.js";
import { HttpTransport } from "../../src/sandbox/http-transport.js";
import { tempDir } from "../helpers/paths.js";
import { bytesOf, bodyOf } from "../helpers/body.js";
import { waitFor } from "../helpers/wait.js";

/**
 * A guest written in JavaScript that follows docs/guest-channel.md as the Linux agent does: each
 * OPEN becomes a connection to a real HTTP server, bytes are relayed both ways.
 */
function fakeGuest(channel: Socket, target: string, opts: { ready?: boolean } = {}): void {
  const decoder = new FrameDecoder();
  const streams = new Map<number, Socket>();
  channel.on("data", (chunk: Buffer) =>
    decoder.push(chunk, (type, id, payload) => {
      if (type === FrameType.OPEN) {
        const s = connect(target);
        streams.set(id, s);
        s.on("data", (d: Buffer) => {
          for (let off = 0; off < d.length; off += MAX_PAYLOAD)
            channel.write(encodeFrame(FrameType.DATA, id, d.subarray(off, off + MAX_PAYLOAD)));
        });
        s.on("close", () => {
          if (streams.delete(id)) channel.write(encodeFrame(FrameType.CLOSE, id));
        });
        s.on("error", () => undefined);
      } else if (type === FrameType.DATA) streams.get(id)?.write(payload);
      else if (type === FrameType.EOF) streams.get(id)?.end();
      else if (type === FrameType.CLOSE) {
        const s = streams.get(id);
        streams.delete(id);
        s?.destroy();
      } else if (type === FrameType.PING) channel.write(encodeFrame(FrameType.PONG, 0, payload));
    }),
  );
  channel.write(encodeFrame(FrameType.LOG, 0, Buffer.from("booted\n")));
  if (opts.ready !== false) channel.write(encodeFrame(FrameType.READY, 0, Buffer.from("fake 1")));
}

describe("guest channel", () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let http: HttpServer;
  let listener: Server;
  let guestSide: Socket | undefined;
  const target = () => join(dir, "fn.sock");

  before(async () => {
    ({ dir, cleanup } = await tempDir());
    http = createHttpServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        if (req.url === "/close") return res.writeHead(200, { connection: "close" }).end("bye");
        res.writeHead(200, { "x-path": req.url ?? "" }).end(Buffer.concat(chunks));
      });
    });
    http.listen(target());
    await once(http, "listening");
  });
  after(async () => {
    guestSide?.destroy();
    listener?.close();
    http.closeAllConnections();
    await new Promise((r) => http.close(r));
    await cleanup();
  });

  /** A host channel whose far end is the fake guest, over a real Unix socket as QEMU's would be. */
  async function pair(opts: { ready?: boolean; log?: InstanceLog } = {}): Promise<GuestChannel> {
    listener?.close();
    listener = createServer();
    const path = join(dir, `ch-${Math.random().toString(36).slice(2)}.sock`);
    listener.listen(path);
    await once(listener, "listening");
    const accepted = once(listener, "connection");
    guestSide = connect(path);
    fakeGuest(guestSide, target(), opts);
    const [host] = (await accepted) as [Socket];
    return new GuestChannel(host, "test guest", opts.log);
  }

  const req = (path: string, body = "") => ({
    method: "POST",
    path,
    query: "",
    headers: {},
    body: bodyOf(body),
  });

  it("frames round-trip through the decoder, split at any byte", () => {
    const frames = [
      encodeFrame(FrameType.DATA, 7, Buffer.from("abc")),
      encodeFrame(FrameType.EOF, 7),
      encodeFrame(FrameType.LOG, 0, Buffer.alloc(MAX_PAYLOAD, 1)),
    ];
    const all = Buffer.concat(frames);
    for (const step of [1, 2, 9, 10, 1000]) {
      const seen: Array<[number, number, number]> = [];
      const d = new FrameDecoder();
      for (let i = 0; i < all.length; i += step)
        d.push(all.subarray(i, i + step), (t, s, p) => seen.push([t, s, p.length]));
      assert.deepEqual(seen, [
        [FrameType.DATA, 7, 3],
        [FrameType.EOF, 7, 0],
        [FrameType.LOG, 0, MAX_PAYLOAD],
      ]);
    }
  });

  it("rejects a frame longer than the protocol allows", () => {
    const bad = Buffer.alloc(9);
    bad.writeUInt8(FrameType.DATA, 0);
    bad.writeUInt32LE(MAX_PAYLOAD + 1, 5);
    assert.throws(() => new FrameDecoder().push(bad, () => undefined), /exceeds/);
  });

  it("waits for READY, keeps the guest's LOG, and carries HTTP with keep-alive", async () => {
    const ch = await pair();
    await ch.ready;
    const t = new HttpTransport({ connect: () => ch.openStream() }, "test");
    for (let i = 0; i < 20; i++) {
      const res = await t.invoke(req(`/n${i}`, `body ${i}`), new AbortController().signal);
      assert.equal(res.status, 200);
      assert.equal((await bytesOf(res.body)).toString(), `body ${i}`);
    }
    assert.match(ch.log, /booted/);
    t.close();
    ch.close();
  });

  it("runs concurrent requests on separate streams and moves large binary bodies intact", async () => {
    const ch = await pair();
    await ch.ready;
    const t = new HttpTransport({ connect: () => ch.openStream() }, "test");
    const big = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7) % 256));
    const results = await Promise.all(
      [0, 1, 2, 3].map((i) =>
        t.invoke({ ...req(`/c${i}`), body: bodyOf(big) }, new AbortController().signal),
      ),
    );
    for (const r of results) assert.deepEqual(await bytesOf(r.body), big);
    t.close();
    ch.close();
  });

  it("survives the function closing its connection (a new stream is opened next time)", async () => {
    const ch = await pair();
    await ch.ready;
    const t = new HttpTransport({ connect: () => ch.openStream() }, "test");
    assert.equal(
      (await bytesOf((await t.invoke(req("/close"), new AbortController().signal)).body)).toString(),
      "bye",
    );
    assert.equal(
      (await bytesOf((await t.invoke(req("/after", "ok"), new AbortController().signal)).body)).toString(),
      "ok",
    );
    t.close();
    ch.close();
  });

  it("hands LOG frames to the instance's log: stream 2 as stderr, 1 (and a unikernel's 0) as stdout", async () => {
    const seen: LogLineEvent[] = [];
    const listener = (m: unknown) => void seen.push(m as LogLineEvent);
    channels.log.subscribe(listener);
    let ch: GuestChannel | undefined;
    try {
      const log = new InstanceLog("default/vm-fn", "i1");
      ch = await pair({ log });
      await ch.ready;
      log.begin("call-1");
      // A line may arrive in pieces, the two streams interleaved.
      guestSide!.write(encodeFrame(FrameType.LOG, 1, Buffer.from("to std")));
      guestSide!.write(encodeFrame(FrameType.LOG, 2, Buffer.from("to stderr\n")));
      guestSide!.write(encodeFrame(FrameType.LOG, 1, Buffer.from("out\n")));
      const lines = await waitFor("the call's lines", () =>
        seen.filter((l) => l.callId === "call-1").length >= 2 ? seen : undefined,
      );
      assert.deepEqual(
        lines.map((l) => [l.stream, l.text, l.callId]),
        [
          ["stdout", "booted", undefined],
          ["stderr", "to stderr", "call-1"],
          ["stdout", "to stdout", "call-1"],
        ],
      );
      assert.equal(lines[1]!.function, "default/vm-fn");
      assert.equal(lines[1]!.instanceId, "i1");
    } finally {
      ch?.close();
      channels.log.unsubscribe(listener);
    }
  });

  it("answers PING with PONG (how a restored guest is found ready)", async () => {
    const ch = await pair({ ready: false });
    await ch.ping(AbortSignal.timeout(60_000));
    ch.close();
  });

  it("fails in-flight requests with FN_CRASHED when the channel drops", async () => {
    const ch = await pair();
    await ch.ready;
    const t = new HttpTransport({ connect: () => ch.openStream() }, "test");
    const pending = t.invoke(req("/x"), new AbortController().signal);
    guestSide!.destroy();
    // Either the request completed before the drop, or it failed as the function's crash.
    await pending.then(
      () => undefined,
      (err: { code?: string }) => assert.equal(err.code, "FN_CRASHED"),
    );
    await assert.rejects(
      ch.ready.then(() => ch.ping(AbortSignal.timeout(60_000))),
      { code: "FN_CRASHED" },
    );
    t.close();
  });
});
