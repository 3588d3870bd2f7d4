import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { errorCode, request } from "../helpers/http.js";
import { waitFor } from "../helpers/wait.js";
import { addWasmFunction, startTestServer, type TestServer } from "../helpers/server.js";

// One handler for every function here: `/count` reads its body as it comes and answers its
// length; `/sized?n=N` answers N bytes whole (so with a content-length); `/stream?n=N` answers N
// 1 KiB chunks one at a time (chunked, no content-length).
const HANDLER = `
export default {
  async fetch(request) {
    const url = new URL(request.url);
    const n = Number(url.searchParams.get("n") ?? 0);
    if (url.pathname.endsWith("/count")) {
      let size = 0;
      for await (const chunk of request.body ?? []) size += chunk.byteLength;
      return new Response(String(size));
    }
    if (url.pathname.endsWith("/sized")) return new Response("x".repeat(n));
    let i = 0;
    return new Response(new ReadableStream({
      async pull(c) {
        await new Promise((r) => setTimeout(r, 5));
        if (i++ < n) c.enqueue(new Uint8Array(1024).fill(120)); else c.close();
      },
    }));
  },
};
`;

const KiB = 1024;
const MiB = 1024 * KiB;
/** The gateway's own limit in this file: small, so a function's larger one is seen to lift it. */
const GLOBAL_LIMIT = 64 * KiB;

type Answer = { status: number; code: string | undefined; text: string };

/**
 * POSTs `size` bytes as a chunked body (no content-length), written with back-pressure in 1 KiB
 * chunks until the gateway answers; an answer that comes early (a refusal) ends the writing.
 */
function postChunked(url: string, size: number): Promise<Answer> {
  return new Promise((resolve, reject) => {
    let answered = false;
    const req = httpRequest(url, { method: "POST" }, (res) => {
      answered = true;
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () =>
        resolve({
          status: res.statusCode ?? 0,
          code: res.headers["x-fennec-error"] as string | undefined,
          text: Buffer.concat(chunks).toString(),
        }),
      );
      res.on("error", reject);
    });
    // The gateway closes the connection after a refusal: writing on may then fail, which is fine.
    req.on("error", (err) => (answered ? undefined : reject(err)));
    const chunk = Buffer.alloc(KiB, 1);
    let sent = 0;
    const more = () => {
      while (sent < size && !answered) {
        sent += chunk.length;
        if (!req.write(chunk)) return void req.once("drain", more);
      }
      req.end();
    };
    more();
  });
}

/**
 * Sends only the head of a POST declaring `length` bytes, and none of the body: a gateway that
 * refuses by the declared length answers anyway; one that reads the body would wait for ever.
 */
function postHeadOnly(url: string, length: number): Promise<{ status: number; code: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: "POST", headers: { "content-length": String(length) } }, (res) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0, code: res.headers["x-fennec-error"] as string | undefined });
      req.destroy();
    });
    req.on("error", () => undefined);
    req.on("close", () => reject(new Error("the connection closed without an answer")));
    req.flushHeaders();
  });
}

describe("per-function body limits (max-request-body, max-response-body; [process] handler, real sockets)", () => {
  let s: TestServer;
  const add = async (name: string, limits: string) => {
    const dir = join(s.registry, name);
    await mkdir(dir);
    await writeFile(join(dir, "handler.js"), HANDLER);
    await writeFile(
      join(dir, "function.toml"),
      `keepalive = 60\nconcurrent-requests = 4\n${limits}\n[process]\nhandler = "handler.js"\n`,
    );
  };
  const post = (fn: string, body: RequestInit["body"]) =>
    request(`${s.url}/invoke/${fn}/count`, { method: "POST", body });

  before(async () => {
    s = await startTestServer({ driverSettings: { process: true }, bodyLimitBytes: GLOBAL_LIMIT });
    await add("small", 'max-request-body = "1KiB"');
    await add("plain", "");
    await add("upload", 'max-request-body = "1MiB"');
    await add("capped", 'max-response-body = "4KiB"');
    // flood.wasm writes as many MiB as its query string says.
    await addWasmFunction(s.registry, "flood-capped", "flood.wasm", 'max-response-body = "1MiB"');
    await addWasmFunction(s.registry, "flood-lifted", "flood.wasm", 'max-response-body = "40MiB"');
  });
  after(() => s.close());

  it("refuses a declared body over the function's limit before reading it; a function without one takes it", async () => {
    const body = Buffer.alloc(4 * KiB, 97);
    const refused = await post("small", body);
    assert.equal(refused.status, 413);
    assert.equal(errorCode(refused), "BODY_TOO_LARGE");
    assert.match(refused.text, /limit of 1024 bytes/);
    assert.equal((await post("plain", body)).text, String(4 * KiB));
    // Only the head is sent: the refusal cannot have waited for the body.
    assert.deepEqual(await postHeadOnly(`${s.url}/invoke/small/count`, 4 * KiB), {
      status: 413,
      code: "BODY_TOO_LARGE",
    });
    assert.equal((await post("small", "x".repeat(1000))).text, "1000");
  });

  it("cuts a chunked body when it passes the function's limit; a function without one takes it", async () => {
    const refused = await postChunked(`${s.url}/invoke/small/count`, 8 * KiB);
    assert.deepEqual([refused.status, refused.code], [413, "BODY_TOO_LARGE"]);
    assert.deepEqual(await postChunked(`${s.url}/invoke/plain/count`, 8 * KiB), {
      status: 200,
      code: undefined,
      text: String(8 * KiB),
    });
    assert.equal((await post("small", "x".repeat(1000))).text, "1000", "the function keeps serving");
  });

  it("takes a body above the gateway's limit where the function's own limit allows it", async () => {
    const body = Buffer.alloc(512 * KiB, 98);
    const refused = await post("plain", body);
    assert.equal(refused.status, 413, "the gateway's limit still holds for other functions");
    assert.equal(errorCode(refused), "BODY_TOO_LARGE");
    assert.equal((await post("upload", body)).text, String(512 * KiB));
    const chunked = await postChunked(`${s.url}/invoke/upload/count`, 512 * KiB);
    assert.deepEqual([chunked.status, chunked.text], [200, String(512 * KiB)]);
    assert.equal((await postChunked(`${s.url}/invoke/plain/count`, 512 * KiB)).code, "BODY_TOO_LARGE");
  });

  it("bounds an asynchronous call's buffered body by the smaller of the function's and the gateway's limits", async () => {
    const small = await request(`${s.url}/fa/default/small/count`, {
      method: "POST",
      body: "x".repeat(2 * KiB),
    });
    assert.equal(small.status, 413);
    assert.equal(errorCode(small), "BODY_TOO_LARGE");
    const upload = await request(`${s.url}/fa/default/upload/count`, {
      method: "POST",
      body: Buffer.alloc(128 * KiB),
    });
    assert.equal(upload.status, 413, "a /fa call keeps its copy in memory: the gateway's limit bounds it");
    const ok = await request(`${s.url}/fa/default/upload/count`, {
      method: "POST",
      body: "x".repeat(2 * KiB),
    });
    assert.equal(ok.status, 202);
  });

  it("answers 502 FN_RESPONSE_TOO_LARGE for a declared response over max-response-body, and cuts a streamed one", async () => {
    assert.equal((await request(`${s.url}/invoke/capped/sized?n=4096`)).text.length, 4096);
    // 5000 bytes come whole (a small response is read at once); 100 KiB would be streamed.
    for (const n of [5000, 100 * KiB]) {
      const declared = await request(`${s.url}/invoke/capped/sized?n=${n}`);
      assert.equal(declared.status, 502, `${n} bytes`);
      assert.equal(errorCode(declared), "FN_RESPONSE_TOO_LARGE");
    }
    assert.equal((await request(`${s.url}/invoke/plain/sized?n=5000`)).text.length, 5000);

    // Streamed: the head and the first KiBs are out before the limit is passed, so the response
    // can only be cut (the client sees an incomplete body); the record says why.
    const streamed = await fetch(`${s.url}/invoke/capped/stream?n=8`);
    assert.equal(streamed.status, 200);
    await assert.rejects(streamed.text());
    await waitFor("the cut call's record", async () => {
      const stats = (await request(`${s.url}/stats`)).json<{
        functions: Record<string, { errors: Record<string, number> }>;
      }>();
      return stats.functions["default/capped"]?.errors["FN_RESPONSE_TOO_LARGE"] === 3 ? true : undefined;
    });
    assert.equal((await request(`${s.url}/invoke/capped/stream?n=4`)).text.length, 4 * KiB);
    assert.equal((await request(`${s.url}/invoke/plain/stream?n=8`)).text.length, 8 * KiB);
  });

  it("applies max-response-body to a wasm module's output, below and above the driver's own 32 MiB cap", async () => {
    assert.equal((await request(`${s.url}/invoke/flood-capped/?1`)).text.length, MiB);
    const cut = await fetch(`${s.url}/invoke/flood-capped/?2`);
    assert.equal(cut.status, 200);
    await assert.rejects(cut.arrayBuffer());
    await waitFor("the cut call's record", async () => {
      const stats = (await request(`${s.url}/stats`)).json<{
        functions: Record<string, { errors: Record<string, number> }>;
      }>();
      return stats.functions["default/flood-capped"]?.errors["FN_RESPONSE_TOO_LARGE"] === 1
        ? true
        : undefined;
    });
    const lifted = await fetch(`${s.url}/invoke/flood-lifted/?33`);
    assert.equal((await lifted.arrayBuffer()).byteLength, 33 * MiB);
  });

  it("shows the limits in the admin API", async () => {
    const config = async (fn: string) =>
      (await request(`${s.url}/system/functions/${fn}`)).json<{ config: Record<string, unknown> }>().config;
    const small = await config("small");
    assert.equal(small["max-request-body"], "1KiB");
    assert.equal(small["max-response-body"], null);
    assert.equal((await config("upload"))["max-request-body"], "1MiB");
    assert.equal((await config("capped"))["max-response-body"], "4KiB");
    assert.equal((await config("plain"))["max-request-body"], null);
  });
});
