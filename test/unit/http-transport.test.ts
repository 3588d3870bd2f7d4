import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { after, before, describe, it } from "node:test";
import { takeWhole, WHOLE_BODY_BYTES, WholeBody } from "../../src/core/body.js";
import type { InvokeRequest } from "../../src/core/types.js";
import { HttpTransport } from "../../src/sandbox/http-transport.js";
import { bodyOf, bytesOf } from "../helpers/body.js";
import { tempDir } from "../helpers/paths.js";

/** Reads a request's body whole (the server side of these tests). */
async function received(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

const post = (path: string, body: InvokeRequest["body"], length?: number): InvokeRequest => ({
  method: "POST",
  path,
  query: "",
  headers: length === undefined ? {} : { "content-length": String(length) },
  body,
});

describe("the hop to an instance's HTTP server (undici, real sockets)", () => {
  let server: Server;
  let socketPath: string;
  let cleanup: () => Promise<void>;
  /** Per connection, how many requests it has carried; `closeSecond` drops a connection's second. */
  const served = new WeakMap<object, number>();
  let closeSecond = false;

  before(async () => {
    const tmp = await tempDir();
    cleanup = tmp.cleanup;
    socketPath = join(tmp.dir, "http.sock");
    server = createServer((req: IncomingMessage, res: ServerResponse) => {
      const n = (served.get(req.socket) ?? 0) + 1;
      served.set(req.socket, n);
      if (closeSecond && n === 2) {
        // A kept-alive connection the server gives up as the next request arrives on it.
        req.socket.destroy();
        return;
      }
      void received(req).then((body) => {
        if (req.url === "/chunked") {
          res.write(body.subarray(0, 1));
          res.end(body.subarray(1));
          return;
        }
        res.setHeader("content-length", body.byteLength);
        res.end(body);
      });
    });
    server.listen(socketPath);
    await once(server, "listening");
  });
  after(async () => {
    server.closeAllConnections();
    server.close();
    await cleanup();
  });

  it("sends a whole body as bytes and hands a small answer on whole, a large or open-ended one as a stream", async () => {
    const t = new HttpTransport({ socketPath }, "test");
    try {
      const small = Buffer.from("hello whole body");
      const res = await t.invoke(post("/", bodyOf(small), small.byteLength), new AbortController().signal);
      assert.ok(res.body instanceof WholeBody, "a small answer of declared length is read whole");
      assert.deepEqual(await bytesOf(res.body), small);

      const large = Buffer.alloc(WHOLE_BODY_BYTES + 1, 7);
      const big = await t.invoke(post("/", bodyOf(large), large.byteLength), new AbortController().signal);
      assert.ok(!(big.body instanceof WholeBody), "a large answer streams");
      assert.deepEqual(await bytesOf(big.body), large);

      const open = await t.invoke(
        post("/chunked", bodyOf(small), small.byteLength),
        new AbortController().signal,
      );
      assert.ok(!(open.body instanceof WholeBody), "an answer without a length streams");
      assert.deepEqual(await bytesOf(open.body), small);
    } finally {
      t.close();
    }
  });

  it("resends a request whose body is at hand when a kept-alive connection is closed under it, never a streamed one", async () => {
    closeSecond = true;
    const t = new HttpTransport({ socketPath }, "test");
    try {
      // One connection: the first call opens it, the second meets it closing and is sent again.
      const first = await t.invoke(post("/", bodyOf("one"), 3), new AbortController().signal);
      assert.equal((await bytesOf(first.body)).toString(), "one");
      const again = await t.invoke(post("/", bodyOf("two"), 3), new AbortController().signal);
      assert.equal((await bytesOf(again.body)).toString(), "two");

      // The same with a body that streams: what was sent of it is gone, so the call fails.
      const warm = await t.invoke(post("/", bodyOf("three"), 5), new AbortController().signal);
      await bytesOf(warm.body);
      const streamed = new PassThrough();
      streamed.end("four");
      await assert.rejects(
        t.invoke(post("/", streamed, 4), new AbortController().signal),
        (err: Error & { code?: string }) => err.code === "FN_CRASHED",
      );
    } finally {
      closeSecond = false;
      t.close();
    }
  });
});

describe("WholeBody", () => {
  it("reads as a stream, or gives its bytes at once to whoever takes them first", async () => {
    assert.equal((await bytesOf(bodyOf("as a stream"))).toString(), "as a stream");
    const whole = bodyOf("taken");
    assert.equal(takeWhole(whole)?.toString(), "taken");
    assert.equal(takeWhole(whole), undefined, "taken once");
    assert.equal((await bytesOf(whole)).byteLength, 0, "then empty and at its end");
    const begun = bodyOf("begun");
    begun.read(0);
    await new Promise((r) => setImmediate(r));
    assert.equal(takeWhole(begun), undefined, "not once reading has begun");
    assert.equal((await bytesOf(begun)).toString(), "begun");
    assert.equal(takeWhole(new PassThrough()), undefined, "other streams are not whole");
  });
});
