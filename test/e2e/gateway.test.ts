import assert from "node:assert/strict";
import { mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { errorCode, request } from "../helpers/http.js";
import { waitFor } from "../helpers/wait.js";
import { EXAMPLES, WASM_FIXTURES } from "../helpers/paths.js";
import { addWasmFunction, rawRequest, startTestServer, type TestServer } from "../helpers/server.js";

const JSON_TYPE = { "content-type": "application/json" };

describe("gateway (real server, real sockets, wasm functions)", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({ bodyLimitBytes: 1024 * 1024 });
    await addWasmFunction(s.registry, "env", "env.wasm", "keepalive = 0");
    await addWasmFunction(s.registry, "status", "status.wasm");
    await addWasmFunction(s.registry, "alice/echo2", "reflect.wasm");
  });
  after(() => s.close());

  it("serves the bundled hello and echo examples, cold then warm", async () => {
    const first = await request(`${s.url}/invoke/hello/`);
    assert.equal(first.status, 200);
    assert.match(first.text, /Hello from Fennec/);
    assert.equal(first.headers.get("x-fennec-start"), "cold");
    const second = await request(`${s.url}/invoke/hello?name=ann`);
    assert.equal(second.headers.get("x-fennec-start"), "warm");
    assert.match(second.text, /ann/);
    const echo = await request(`${s.url}/invoke/echo/`, {
      method: "POST",
      body: "ping pong",
      headers: { "content-type": "text/x-test" },
    });
    assert.equal(echo.text, "ping pong");
    assert.equal(echo.headers.get("content-type"), "text/x-test");
  });

  it("passes any method, multi-segment paths, query and headers to the function", async () => {
    const r = await request(`${s.url}/invoke/env/a/b/c?x=1&y=two`, {
      method: "PUT",
      body: "the body",
      headers: { "x-trace": "t-1" },
    });
    assert.equal(r.status, 200);
    for (const line of [
      "REQUEST_METHOD=PUT",
      "PATH_INFO=/a/b/c",
      "QUERY_STRING=x=1&y=two",
      "HTTP_X_TRACE=t-1",
      "CONTENT_LENGTH=8",
      "BODY=the body",
    ]) {
      assert.ok(r.text.includes(line), `${line} in\n${r.text}`);
    }
    const del = await request(`${s.url}/invoke/env`, { method: "DELETE" });
    assert.ok(del.text.includes("REQUEST_METHOD=DELETE") && del.text.includes("PATH_INFO=/\n"), del.text);
  });

  it("returns the function's status, headers and body, but never its x-fennec-* headers", async () => {
    const r = await request(`${s.url}/invoke/status/`);
    assert.equal(r.status, 404);
    assert.equal(r.headers.get("content-type"), "text/plain");
    // x-fennec-* headers are the platform's: a function cannot set them.
    assert.equal(r.headers.get("x-fennec-test"), null);
    assert.equal(r.text, "not here\n");
  });

  it("serves Faasm's sync route for user functions and the default user", async () => {
    const a = await request(`${s.url}/f/default/echo`, { method: "POST", body: "faasm" });
    assert.equal(a.text, "faasm");
    const b = await request(`${s.url}/f/alice/echo2`, { method: "POST", body: "user scoped" });
    assert.equal(b.text, "user scoped");
    const wrong = await request(`${s.url}/f/default/echo`, { method: "GET" });
    assert.equal(wrong.status, 405);
    assert.equal(errorCode(wrong), "METHOD_NOT_ALLOWED");
  });

  it("runs Faasm-style asynchronous calls", async () => {
    const r = await request(`${s.url}/fa/default/echo`, { method: "POST", body: "later" });
    assert.equal(r.status, 202);
    const { callId } = r.json<{ callId: string }>();
    const result = await waitFor("the asynchronous call to finish", async () => {
      const polled = await request(`${s.url}/fa/calls/${callId}`);
      return polled.status === 202 ? undefined : polled;
    });
    assert.equal(result.status, 200);
    assert.equal(result.text, "later");
    assert.equal((await request(`${s.url}/fa/calls/nope`)).status, 404);
  });

  it("puts a correlation id on every response, keeping a safe one the caller sent", async () => {
    const mine = await request(`${s.url}/invoke/hello/`, { headers: { "x-request-id": "abc-123" } });
    assert.equal(mine.headers.get("x-request-id"), "abc-123");
    const made = await request(`${s.url}/nope`);
    assert.match(made.headers.get("x-request-id") ?? "", /^[0-9a-f-]{36}$/);
    const unsafe = await request(`${s.url}/healthz`, { headers: { "x-request-id": "bad id\twith tab" } });
    assert.notEqual(unsafe.headers.get("x-request-id"), "bad id\twith tab");
    assert.equal(
      made.json<{ error: { requestId: string } }>().error.requestId,
      made.headers.get("x-request-id"),
    );
  });

  it("refuses a body over the limit with 413 and keeps serving", async () => {
    const big = Buffer.alloc(2 * 1024 * 1024, 97);
    const r = await request(`${s.url}/invoke/echo/`, { method: "POST", body: big });
    assert.equal(r.status, 413);
    assert.equal(errorCode(r), "BODY_TOO_LARGE");
    assert.equal(
      (await request(`${s.url}/invoke/echo/`, { method: "POST", body: "still here" })).text,
      "still here",
    );
  });

  it("answers 404 for unknown functions and routes", async () => {
    const r = await request(`${s.url}/invoke/nobody/`);
    assert.equal(r.status, 404);
    assert.equal(errorCode(r), "FUNCTION_NOT_FOUND");
    assert.equal(errorCode(await request(`${s.url}/what`)), "NOT_FOUND");
  });

  it("refuses path tricks in function names: .., %2F, NUL, look-alike unicode", async () => {
    for (const path of [
      "/invoke/../hello/",
      "/invoke/..%2Fhello/",
      "/invoke/a%2Fb/",
      "/invoke/hello%00/",
      "/invoke/h%D0%B5llo/",
      "/f/..%2F..%2Fetc/passwd",
      "/f/default/%2E%2E",
      "/invoke/.hidden/",
      "/invoke/%ZZ/",
    ]) {
      const r = await rawRequest(s.url, "POST", path, "x");
      assert.ok(r.status === 400, `${path} -> ${r.status} ${r.text}`);
    }
    const up = await rawRequest(s.url, "PUT", "/f/..%2F..%2Ftmp/evil", "\0asm");
    assert.equal(up.status, 400);
  });

  it("exposes /stats with the thesis keys and per-function figures", async () => {
    await request(`${s.url}/invoke/hello/`);
    const stats = (await request(`${s.url}/stats`)).json<Record<string, unknown>>();
    for (const key of [
      "NumbInitVms",
      "VmInitTimeNanoAvg",
      "VmInitTimeNanoStd",
      "VmInitTimeNano95",
      "VmInitTimeNanoMax",
      "FuncExecTimeNanoAvg",
      "FuncExecTimeNanoStd",
      "FuncExecTimeNano95",
      "FuncExecTimeNanoMax",
    ]) {
      assert.equal(typeof stats[key], "number", key);
    }
    assert.ok((stats["NumbInitVms"] as number) >= 1);
    assert.ok((stats["FuncExecTimeNanoAvg"] as number) > 0);
    const hello = (
      stats["functions"] as Record<
        string,
        { invocations: number; starts: Record<string, number>; execMs: { p50: number } }
      >
    )["default/hello"]!;
    assert.ok(hello.invocations >= 3);
    assert.ok(hello.starts["cold"]! >= 1 && hello.starts["warm"]! >= 1);
    assert.ok(hello.execMs.p50 > 0);
  });

  it("serves /metrics in Prometheus text format, /healthz and the readiness callback", async () => {
    const m = await request(`${s.url}/metrics`);
    assert.match(m.headers.get("content-type") ?? "", /text\/plain/);
    assert.match(
      m.text,
      /fennec_invocations_total\{function="default\/hello",start_type="cold",outcome="ok"\} \d+/,
    );
    assert.match(m.text, /fennec_instances\{/);
    assert.equal((await request(`${s.url}/healthz`)).text, "ok\n");
    assert.equal((await request(`${s.url}/ready/some-instance`)).text, "ok");
    assert.equal((await request(`${s.url}/ready/some-instance`, { method: "POST" })).status, 200);
  });

  it("pre-boots warm instances; their first calls are recorded as pre-booted", async () => {
    const r = await request(`${s.url}/preBoot/fib`, { method: "POST", body: "2", headers: JSON_TYPE });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json<{ started: number }>().started, 2);
    const stats = (await request(`${s.url}/stats`)).json<{ instances: Record<string, { ready: number }> }>();
    assert.equal(stats.instances["default/fib"]?.ready, 2);
    const call = await request(`${s.url}/invoke/fib/?n=10`);
    assert.equal(call.headers.get("x-fennec-start"), "prebooted");
    assert.match(call.text, /fib\(10\) = 55/);
    assert.equal(
      errorCode(await request(`${s.url}/preBoot/fib`, { method: "POST", body: "lots", headers: JSON_TYPE })),
      "BAD_REQUEST",
    );
    const user = await request(`${s.url}/preBoot/alice/echo2/`, {
      method: "POST",
      body: "1",
      headers: JSON_TYPE,
    });
    assert.equal(user.json<{ function: string; started: number }>().function, "alice/echo2");
  });

  it("applies edits of function.toml on disk to new instances without a restart", async () => {
    const file = join(s.registry, "env", "function.toml");
    const before = await request(`${s.url}/invoke/env/`);
    assert.ok(!before.text.includes("GREETING=hi"));
    await writeFile(
      file,
      (await readFile(file, "utf8")).replace(
        'module = "env.wasm"',
        'module = "env.wasm"\nenv = { GREETING = "hi" }',
      ),
    );
    // keepalive = 0: the old instance is reaped, and a call after that starts a new one.
    const after = await waitFor("a call to see the edited config", async () => {
      const r = await request(`${s.url}/invoke/env/`);
      return r.text.includes("GREETING=hi") ? r : undefined;
    });
    assert.ok(after.text.includes("GREETING=hi"), after.text);
  });

  it("uploads a module with PUT /f/<user>/<fn>, persisted in the registry", async () => {
    const bytes = await readFile(join(EXAMPLES, "echo", "echo.wasm"));
    const r = await request(`${s.url}/f/bob/up`, { method: "PUT", body: bytes });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(await readFile(join(s.registry, "@bob", "up", "function.wasm")), bytes);
    assert.match(await readFile(join(s.registry, "@bob", "up", "function.toml"), "utf8"), /\[wasm\]/);
    assert.equal((await request(`${s.url}/f/bob/up`, { method: "POST", body: "uploaded" })).text, "uploaded");
  });

  it("refuses uploads that are not runnable modules, keeping the old one", async () => {
    for (const [fixture, pattern] of [
      ["not-wasm.wasm", /not a valid WebAssembly module/],
      ["forbidden-import.wasm", /env\.open_socket/],
    ] as const) {
      const r = await request(`${s.url}/f/bob/up`, {
        method: "PUT",
        body: await readFile(join(WASM_FIXTURES, fixture)),
      });
      assert.equal(r.status, 422, fixture);
      assert.equal(errorCode(r), "MODULE_INVALID");
      assert.match(r.text, pattern);
    }
    assert.equal((await request(`${s.url}/f/bob/up`, { method: "POST", body: "kept" })).text, "kept");
  });

  it("never leaves a torn module when two uploads of one name race", async () => {
    const echo = await readFile(join(EXAMPLES, "echo", "echo.wasm"));
    const hello = await readFile(join(EXAMPLES, "hello", "hello.wasm"));
    for (let round = 0; round < 5; round++) {
      const results = await Promise.all([
        request(`${s.url}/f/bob/race`, { method: "PUT", body: echo }),
        request(`${s.url}/f/bob/race`, { method: "PUT", body: hello }),
      ]);
      assert.deepEqual(
        results.map((r) => r.status),
        [200, 200],
      );
      const stored = await readFile(join(s.registry, "@bob", "race", "function.wasm"));
      assert.ok(stored.equals(echo) || stored.equals(hello), "stored module is one upload, whole");
    }
    const leftovers = (await readdir(join(s.registry, "@bob", "race"))).filter((n) =>
      n.startsWith(".fennec-tmp-"),
    );
    assert.deepEqual(leftovers, []);
  });
});

// A fetch handler in a [process] sandbox that streams: `/sse` sends event 1, then waits for the
// test to open its gate (a second request, `/open`) before event 2; `/count` reads its body as it
// comes and answers with its length; `/big` answers 5000 bytes; anything else echoes the body.
const STREAMING_HANDLER = `
const gates = new Map();
const gate = (g) => {
  let e = gates.get(g);
  if (!e) { let open; e = { promise: new Promise((r) => (open = r)) }; e.open = open; gates.set(g, e); }
  return e;
};
export default {
  async fetch(request) {
    const url = new URL(request.url);
    const g = url.searchParams.get("gate") ?? "";
    if (url.pathname.endsWith("/open")) { gate(g).open(); return new Response("opened"); }
    if (url.pathname.endsWith("/sse")) {
      const enc = new TextEncoder();
      return new Response(new ReadableStream({
        async start(c) {
          c.enqueue(enc.encode("data: 1\\n\\n"));
          await gate(g).promise;
          c.enqueue(enc.encode("data: 2\\n\\n"));
          c.close();
        },
      }), { headers: { "content-type": "text/event-stream" } });
    }
    if (url.pathname.endsWith("/count")) {
      let n = 0;
      for await (const chunk of request.body) n += chunk.byteLength;
      return new Response(String(n));
    }
    if (url.pathname.endsWith("/big")) return new Response("x".repeat(5000));
    return new Response(request.body);
  },
};
`;

describe("gateway streaming ([process] fetch handler, real sockets)", () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({
      driverSettings: { process: true },
      bodyLimitBytes: 1024 * 1024,
      asyncResultLimitBytes: 1000,
    });
    const dir = join(s.registry, "streamer");
    await mkdir(dir);
    await writeFile(join(dir, "handler.js"), STREAMING_HANDLER);
    await writeFile(
      join(dir, "function.toml"),
      'keepalive = 60\nconcurrent-requests = 4\ntimeout = 30\n[process]\nhandler = "handler.js"\n',
    );
  });
  after(() => s.close());

  it("delivers server-sent events one by one: event 1 arrives while the handler still waits", async () => {
    const res = await fetch(`${s.url}/invoke/streamer/sse?gate=e2e`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "text/event-stream");
    const reader = res.body!.getReader();
    let seen = "";
    while (!seen.includes("data: 1")) {
      const r = await reader.read();
      assert.ok(!r.done, "the stream ended before event 1");
      seen += Buffer.from(r.value).toString();
    }
    assert.ok(!seen.includes("data: 2"), "event 2 came before the gate opened");
    assert.equal((await request(`${s.url}/invoke/streamer/open?gate=e2e`)).text, "opened");
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      seen += Buffer.from(r.value).toString();
    }
    assert.equal(seen, "data: 1\n\ndata: 2\n\n");
    const stats = (await request(`${s.url}/stats`)).json<{
      functions: Record<string, { ttfbMs: { p50: number }; execMs: { p50: number } }>;
    }>();
    const f = stats.functions["default/streamer"]!;
    assert.ok(f.ttfbMs.p50 <= f.execMs.p50, "ttfb is recorded next to exec");
  });

  it("refuses a streamed (chunked) body over the limit with 413 and keeps serving", async () => {
    const answer = await new Promise<{ status: number; code: string | undefined }>((resolve, reject) => {
      const req = httpRequest(`${s.url}/invoke/streamer/count`, { method: "POST" }, (res) => {
        res.resume();
        resolve({ status: res.statusCode ?? 0, code: res.headers["x-fennec-error"] as string | undefined });
      });
      req.on("error", reject);
      // No content-length: the limit can only be applied to what arrives. Written with
      // back-pressure until the gateway answers (it then closes the connection).
      const chunk = Buffer.alloc(64 * 1024, 1);
      let sent = 0;
      const more = () => {
        while (sent < 8 * 1024 * 1024) {
          sent += chunk.length;
          if (!req.write(chunk)) return void req.once("drain", more);
        }
        req.end();
      };
      more();
    });
    assert.deepEqual(answer, { status: 413, code: "BODY_TOO_LARGE" });
    const ok = await request(`${s.url}/invoke/streamer/count`, { method: "POST", body: "x".repeat(1000) });
    assert.equal(ok.text, "1000");
  });

  it("runs asynchronous calls with a bounded copy of the result", async () => {
    const poll = async (callId: string) =>
      waitFor("the asynchronous call to finish", async () => {
        const polled = await request(`${s.url}/fa/calls/${callId}`);
        return polled.status === 202 ? undefined : polled;
      });
    const r = await request(`${s.url}/fa/default/streamer`, { method: "POST", body: "kept for later" });
    assert.equal(r.status, 202);
    const done = await poll(r.json<{ callId: string }>().callId);
    assert.equal(done.status, 200);
    assert.equal(done.text, "kept for later");
    // 5000 bytes is more than the 1000 this server keeps per result.
    const big = await request(`${s.url}/fa/default/streamer/big`, { method: "POST", body: "" });
    const failed = await poll(big.json<{ callId: string }>().callId);
    assert.equal(failed.status, 502);
    assert.equal(errorCode(failed), "FN_RESPONSE_TOO_LARGE");
  });
});
