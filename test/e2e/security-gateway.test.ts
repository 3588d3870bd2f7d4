import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { errorCode, request } from "../helpers/http.js";
import { CLI, copyExamples, EXAMPLES, tempDir } from "../helpers/paths.js";
import { startFennec } from "../../src/main.js";
import {
  addWasmFunction,
  rawRequest,
  startTestServer,
  type RawAnswer,
  type TestServer,
} from "../helpers/server.js";
import { wagiModule } from "../helpers/wagi-module.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One request with exactly the headers given (fetch adds and forbids some). */
function send(
  url: string,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: string | Uint8Array,
): Promise<RawAnswer> {
  return rawRequest(url, method, path, body, headers);
}

const codeOf = (a: RawAnswer): string | undefined =>
  (JSON.parse(a.text) as { error?: { code?: string } }).error?.code;

/** Everything a raw connection receives until the server closes it. */
function rawExchange(url: string, text: string): Promise<string> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(u.port), u.hostname, () => socket.write(text));
    const chunks: Buffer[] = [];
    socket.on("data", (c: Buffer) => chunks.push(c));
    socket.on("error", reject);
    socket.on("close", () => resolve(Buffer.concat(chunks).toString("latin1")));
  });
}

function openSocket(url: string): Promise<Socket> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(u.port), u.hostname, () => resolve(socket));
    socket.once("error", reject);
  });
}

/** Sends one keep-alive request on `socket` and resolves with the response head's status line. */
function statusLineOn(socket: Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = "";
    const onData = (c: Buffer) => {
      got += c.toString("latin1");
      if (got.includes("\r\n\r\n") && got.includes("ok\n")) done(got.split("\r\n")[0]!);
    };
    const onClose = () => done("closed");
    const done = (line: string) => {
      socket.off("data", onData);
      socket.off("close", onClose);
      resolve(line);
    };
    socket.on("data", onData);
    socket.once("close", onClose);
    socket.once("error", () => undefined);
    try {
      socket.write("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    } catch (err) {
      reject(err);
    }
  });
}

async function deployDoc(name: string): Promise<string> {
  const module = (await readFile(join(EXAMPLES, "echo", "echo.wasm"))).toString("base64");
  const toml = 'keepalive = 5\nconcurrent-requests = 1\n[wasm]\nmodule = "main.wasm"\nmemory = 16\n';
  return JSON.stringify({ name, toml, module });
}

async function addWagi(registry: string, name: string, stdout: string, toml = ""): Promise<void> {
  const dir = join(registry, name);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, "main.wasm"), wagiModule(stdout));
  await writeFile(
    join(dir, "function.toml"),
    `keepalive = 30\nconcurrent-requests = 1\n${toml}\n[wasm]\nmodule = "main.wasm"\nmemory = 16\n`,
  );
}

describe("security of the gateway's HTTP surface", () => {
  let open: TestServer; // no token, as `fennec serve` runs by default
  let guarded: TestServer; // with a token and small limits
  const TOKEN = "t0ken-for-tests";
  before(async () => {
    open = await startTestServer();
    guarded = await startTestServer({
      token: TOKEN,
      server: { headersTimeoutMs: 1000, maxConnections: 3 },
    });
    await addWasmFunction(open.registry, "env", "env.wasm");
    await addWasmFunction(open.registry, "envcred", "env.wasm", "forward-credentials = true");
    await addWagi(open.registry, "s101", "Status: 101\nContent-Type: text/plain\n\nswitching?");
    await addWagi(open.registry, "s100", "Status: 100\n\ncontinue?");
    await addWagi(open.registry, "s700", "Status: 700\n\nodd");
    await addWagi(open.registry, "s204", "Status: 204\nContent-Type: text/plain\n\nno body allowed");
    await addWagi(open.registry, "s304", "Status: 304\n\nno body allowed");
    await addWagi(
      open.registry,
      "forge",
      "Content-Type: text/plain\nX-Request-Id: spoofed\nX-Fennec-Error: FN_FAKE\nX-Fennec-Start: forged\nX-Other: kept\n\nforged?",
    );
  });
  after(async () => {
    await open?.close();
    await guarded?.close();
  });

  describe("cross-site requests to admin, upload and preBoot routes are refused, token or not", () => {
    it("refuses deploys with a type an HTML form or a no-preflight fetch can send", async () => {
      const doc = await deployDoc("csrf");
      for (const type of [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
      ]) {
        const r = await send(open.url, "POST", "/system/functions", { "content-type": type }, doc);
        assert.equal(r.status, 415, `${type}: ${r.text}`);
        assert.equal(codeOf(r), "UNSUPPORTED_MEDIA_TYPE");
      }
      const untyped = await send(open.url, "POST", "/system/functions", {}, doc);
      assert.equal(codeOf(untyped), "UNSUPPORTED_MEDIA_TYPE");
      await assert.rejects(stat(join(open.registry, "csrf")), "nothing deployed");
      assert.equal(errorCode(await request(`${open.url}/invoke/csrf`)), "FUNCTION_NOT_FOUND");
    });

    it("refuses a foreign Origin and Sec-Fetch-Site cross-site or same-site", async () => {
      const doc = await deployDoc("csrf");
      const json = { "content-type": "application/json" };
      for (const headers of [
        { ...json, origin: "http://evil.example" },
        { ...json, origin: "null" },
        { ...json, origin: `http://localhost:1${new URL(open.url).port}` },
        { ...json, "sec-fetch-site": "cross-site" },
        { ...json, "sec-fetch-site": "same-site" },
      ]) {
        const r = await send(open.url, "POST", "/system/functions", headers, doc);
        assert.equal(r.status, 403, `${JSON.stringify(headers)}: ${r.text}`);
        assert.equal(codeOf(r), "CROSS_SITE_REFUSED");
      }
      // A valid token does not make a cross-site request acceptable.
      const withToken = await send(
        guarded.url,
        "POST",
        "/system/functions",
        { ...json, authorization: `Bearer ${TOKEN}`, "sec-fetch-site": "cross-site" },
        doc,
      );
      assert.equal(codeOf(withToken), "CROSS_SITE_REFUSED");
      await assert.rejects(stat(join(open.registry, "csrf")), "nothing deployed");
      await assert.rejects(stat(join(guarded.registry, "csrf")), "nothing deployed");
    });

    it("refuses cross-site uploads, deletes and pre-boots, and lists nothing to other sites", async () => {
      const module = await readFile(join(EXAMPLES, "echo", "echo.wasm"));
      const form = await send(open.url, "PUT", "/f/mallory/up", { "content-type": "text/plain" }, module);
      assert.equal(codeOf(form), "UNSUPPORTED_MEDIA_TYPE");
      const foreign = await send(
        open.url,
        "PUT",
        "/f/mallory/up",
        { "content-type": "application/wasm", origin: "https://evil.example" },
        module,
      );
      assert.equal(codeOf(foreign), "CROSS_SITE_REFUSED");
      await assert.rejects(stat(join(open.registry, "mallory")), "nothing uploaded");

      const del = await send(open.url, "DELETE", "/system/functions/hello", {
        "sec-fetch-site": "cross-site",
      });
      assert.equal(codeOf(del), "CROSS_SITE_REFUSED");
      await stat(join(open.registry, "hello", "function.toml"));

      const list = await send(open.url, "GET", "/system/functions", { "sec-fetch-site": "cross-site" });
      assert.equal(codeOf(list), "CROSS_SITE_REFUSED");

      const boot = await send(open.url, "POST", "/preBoot/hello", { "content-type": "text/plain" }, "3");
      assert.equal(codeOf(boot), "UNSUPPORTED_MEDIA_TYPE");
      const bootForeign = await send(
        open.url,
        "POST",
        "/preBoot/hello",
        { origin: "http://evil.example" },
        "3",
      );
      assert.equal(codeOf(bootForeign), "CROSS_SITE_REFUSED");
    });

    it("accepts what tools and the same origin send", async () => {
      const own = { "content-type": "application/json", origin: open.url, "sec-fetch-site": "same-origin" };
      const r = await send(open.url, "POST", "/system/functions", own, await deployDoc("mine"));
      assert.equal(r.status, 201, r.text);
      assert.equal((await request(`${open.url}/f/default/mine`, { method: "POST", body: "hi" })).text, "hi");
      // The CLI uploads module bytes without a Content-Type; a browser cannot send a PUT unpreflighted.
      const module = await readFile(join(EXAMPLES, "echo", "echo.wasm"));
      assert.equal((await send(open.url, "PUT", "/f/tool/up", {}, module)).status, 200);
      const typed = await send(
        open.url,
        "PUT",
        "/f/tool/up2",
        { "content-type": "application/wasm" },
        module,
      );
      assert.equal(typed.status, 200, typed.text);
      assert.equal((await send(open.url, "POST", "/preBoot/hello", {}, "1")).status, 200);
    });

    it("says loudly at start when no admin token is set", async () => {
      const { dir, cleanup } = await tempDir();
      const registry = await copyExamples(dir);
      const firstLines = async (extra: string[]): Promise<string> => {
        const env = { ...process.env };
        delete env["FENNEC_TOKEN"];
        const child = spawn(process.execPath, [CLI, "serve", "-r", registry, "--port", "0", ...extra], {
          env,
          stdio: ["ignore", "ignore", "pipe"],
        });
        let log = "";
        child.stderr.on("data", (c: Buffer) => (log += c.toString()));
        try {
          // Serving is announced once the port is open; the warning comes right after it.
          await new Promise<void>((resolve, reject) => {
            child.stderr.on("data", () => {
              if (/Fennec serving/.test(log)) setTimeout(resolve, 200);
            });
            child.once("exit", (code) => reject(new Error(`fennec serve exited (${code}): ${log}`)));
          });
          return log;
        } finally {
          const exited = new Promise((r) => child.once("exit", r));
          child.kill("SIGTERM");
          await exited;
        }
      };
      try {
        assert.match(
          await firstLines([]),
          /warn .*NO ADMIN TOKEN: anyone who can reach http:\/\/127\.0\.0\.1:\d+/,
        );
        assert.doesNotMatch(await firstLines(["--token", "x"]), /NO ADMIN TOKEN/);
      } finally {
        await cleanup();
      }
    });
  });

  describe("DNS rebinding: requests for a host name the gateway does not answer to are refused", () => {
    /** The headers a browser sends from a page on `host` that rebinding has pointed at Fennec. */
    const rebound = (url: string, host: string): Record<string, string> => ({
      host: `${host}:${new URL(url).port}`,
      origin: `http://${host}:${new URL(url).port}`,
      "sec-fetch-site": "same-origin",
    });

    it("refuses a same-origin deploy, upload, pre-boot and listing for Host evil.example, without a token", async () => {
      const headers = rebound(open.url, "evil.example");
      const json = { ...headers, "content-type": "application/json" };
      const deploy = await send(open.url, "POST", "/system/functions", json, await deployDoc("rebound"));
      assert.equal(deploy.status, 403, deploy.text);
      assert.equal(codeOf(deploy), "HOST_NOT_ALLOWED");
      assert.match(deploy.text, /--allowed-host evil\.example/, "the message says how to allow the name");
      const module = await readFile(join(EXAMPLES, "echo", "echo.wasm"));
      const upload = await send(open.url, "PUT", "/f/rebound/up", headers, module);
      assert.equal(codeOf(upload), "HOST_NOT_ALLOWED");
      const boot = await send(open.url, "POST", "/preBoot/hello", json, "1");
      assert.equal(codeOf(boot), "HOST_NOT_ALLOWED");
      for (const path of ["/system/functions", "/system/functions/hello"]) {
        const r = await send(open.url, "GET", path, headers);
        assert.equal(codeOf(r), "HOST_NOT_ALLOWED", path);
      }
      const del = await send(open.url, "DELETE", "/system/functions/hello", headers);
      assert.equal(codeOf(del), "HOST_NOT_ALLOWED");
      await stat(join(open.registry, "hello", "function.toml"));
      await assert.rejects(stat(join(open.registry, "rebound")), "nothing deployed");
      await assert.rejects(stat(join(open.registry, "default", "rebound")), "nothing deployed");
      assert.equal(errorCode(await request(`${open.url}/invoke/rebound`)), "FUNCTION_NOT_FOUND");
    });

    it("refuses invocations, /fa, /stats and /metrics for a foreign Host, and names that only look local", async () => {
      for (const host of [
        "evil.example",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "evil.example.",
        "EVIL.example",
      ]) {
        const headers = rebound(open.url, host);
        for (const [method, path] of [
          ["GET", "/invoke/hello/"],
          ["POST", "/f/default/echo"],
          ["POST", "/fa/default/echo"],
          ["GET", "/fa/calls/0"],
          ["GET", "/stats"],
          ["GET", "/metrics"],
        ] as const) {
          const r = await send(open.url, method, path, headers, method === "POST" ? "x" : undefined);
          assert.equal(r.status, 403, `${host} ${method} ${path}: ${r.text}`);
          assert.equal(codeOf(r), "HOST_NOT_ALLOWED");
        }
      }
      // Instances' readiness callbacks and the health probe reveal nothing and stay open to any Host.
      const health = await send(open.url, "GET", "/healthz", { host: "evil.example" });
      assert.equal(health.text, "ok\n");
      const ready = await send(open.url, "GET", "/ready/no-such-instance", { host: "evil.example" });
      assert.equal(ready.status, 200);
    });

    it("keeps the check when a token is set: a valid token does not make a foreign Host acceptable", async () => {
      const auth = { authorization: `Bearer ${TOKEN}` };
      const foreign = await send(guarded.url, "GET", "/system/functions", {
        ...auth,
        ...rebound(guarded.url, "evil.example"),
      });
      assert.equal(foreign.status, 403, foreign.text);
      assert.equal(codeOf(foreign), "HOST_NOT_ALLOWED");
      const own = await send(guarded.url, "GET", "/system/functions", {
        ...auth,
        host: `localhost:${new URL(guarded.url).port}`,
      });
      assert.equal(own.status, 200, own.text);
    });

    it("answers to loopback names and IP literals, with or without the port", async () => {
      const port = new URL(open.url).port;
      for (const host of [
        `localhost:${port}`,
        `127.0.0.1:${port}`,
        `[::1]:${port}`,
        `app.localhost:${port}`,
        `LocalHost.:${port}`,
        "localhost",
        "127.0.0.1",
        `10.1.2.3:${port}`,
      ]) {
        const r = await send(open.url, "GET", "/invoke/hello/", { host });
        assert.equal(r.status, 200, `${host}: ${r.text}`);
      }
      // A page Fennec itself served (same origin, same name) may still deploy.
      const own = { ...rebound(open.url, "localhost"), "content-type": "application/json" };
      const r = await send(open.url, "POST", "/system/functions", own, await deployDoc("bylocalhost"));
      assert.equal(r.status, 201, r.text);
      const listed = await send(open.url, "GET", "/system/functions", rebound(open.url, "127.0.0.1"));
      assert.equal(listed.status, 200, listed.text);
    });

    it("answers to the names in allowedHosts, a leading dot adding subdomains", async () => {
      const named = await startTestServer({ allowedHosts: ["Fennec.test", ".apps.test"] });
      try {
        for (const host of ["fennec.test", "apps.test", "a.apps.test", "b.a.apps.test"]) {
          const headers = { ...rebound(named.url, host), "content-type": "application/json" };
          const r = await send(named.url, "POST", "/system/functions", headers, await deployDoc("named"));
          assert.ok(r.status === 201 || r.status === 200, `${host}: ${r.text}`);
        }
        for (const host of ["evil.example", "fennec.test.evil.example", "xapps.test", "sub.fennec.test"]) {
          const r = await send(named.url, "GET", "/invoke/hello/", { host });
          assert.equal(codeOf(r), "HOST_NOT_ALLOWED", host);
        }
      } finally {
        await named.close();
      }
      const { dir, cleanup } = await tempDir();
      try {
        await assert.rejects(
          startFennec({ registry: dir, port: 0, logLevel: "silent", allowedHosts: ["evil.example:8123/x"] }),
          /allowed host "evil\.example:8123\/x" is not a host name/,
        );
      } finally {
        await cleanup();
      }
    });

    it("fennec serve --allowed-host NAME (repeatable) answers to those names only", async () => {
      const { dir, cleanup } = await tempDir();
      const registry = await copyExamples(dir);
      const env = { ...process.env };
      delete env["FENNEC_TOKEN"];
      const args = ["serve", "-r", registry, "--port", "0", "--log-level", "info"];
      const child = spawn(
        process.execPath,
        [CLI, ...args, "--allowed-host", "fennec.test", "--allowed-host", "other.test"],
        { env, stdio: ["ignore", "ignore", "pipe"] },
      );
      let log = "";
      child.stderr.on("data", (c: Buffer) => (log += c.toString()));
      const exited = new Promise<number | null>((r) => child.once("exit", r));
      try {
        const url = await new Promise<string>((resolve, reject) => {
          child.stderr.on("data", () => {
            const m = /Fennec serving .* on (http:\/\/\S+)/.exec(log);
            if (m) resolve(m[1]!);
          });
          void exited.then((code) => reject(new Error(`fennec serve exited (${code}): ${log}`)));
        });
        const port = new URL(url).port;
        for (const host of ["fennec.test", "other.test", "localhost"]) {
          const r = await send(url, "GET", "/invoke/hello/", { host: `${host}:${port}` });
          assert.equal(r.status, 200, `${host}: ${r.text}`);
        }
        const r = await send(url, "GET", "/invoke/hello/", { host: `evil.example:${port}` });
        assert.equal(codeOf(r), "HOST_NOT_ALLOWED");
      } finally {
        child.kill("SIGTERM");
        await exited;
      }
      // A malformed name stops the server at start, with the reason.
      const bad = spawn(process.execPath, [CLI, ...args, "--allowed-host", "http://x.test/"], {
        env,
        stdio: ["ignore", "ignore", "pipe"],
      });
      let badLog = "";
      bad.stderr.on("data", (c: Buffer) => (badLog += c.toString()));
      try {
        // It exits; were it to serve instead, the test fails rather than waits.
        const code = await new Promise<number | null | "serving">((r) => {
          bad.once("exit", r);
          bad.stderr.on("data", () => /Fennec serving/.test(badLog) && r("serving"));
        });
        assert.notEqual(code, "serving", badLog);
        assert.notEqual(code, 0, badLog);
        assert.match(badLog, /allowed host "http:\/\/x\.test\/" is not a host name/);
      } finally {
        if (bad.exitCode === null && bad.signalCode === null) {
          const gone = new Promise((r) => bad.once("exit", r));
          bad.kill("SIGTERM");
          await gone;
        }
        await cleanup();
      }
    });
  });

  describe("secrets and names", () => {
    it("does not forward Authorization, Proxy-Authorization or Cookie unless function.toml opts in", async () => {
      const headers = {
        authorization: "Bearer admin-secret",
        "proxy-authorization": "Basic cHJveHk=",
        cookie: "session=abc",
        "x-other": "visible",
      };
      const plain = await send(open.url, "GET", "/invoke/env/", headers);
      assert.equal(plain.status, 200, plain.text);
      assert.match(plain.text, /HTTP_X_OTHER=visible/);
      assert.doesNotMatch(plain.text, /HTTP_AUTHORIZATION|HTTP_PROXY_AUTHORIZATION|HTTP_COOKIE|admin-secret/);
      const opted = await send(open.url, "GET", "/invoke/envcred/", headers);
      assert.match(opted.text, /HTTP_AUTHORIZATION=Bearer admin-secret/);
      assert.match(opted.text, /HTTP_PROXY_AUTHORIZATION=Basic cHJveHk=/);
      assert.match(opted.text, /HTTP_COOKIE=session=abc/);
    });

    it("does not echo a 10 KB bad name back whole", async () => {
      const name = "x".repeat(5000) + "!" + "y".repeat(5000);
      for (const path of [
        `/invoke/${name}`,
        `/f/${name}/fn`,
        `/nowhere/${name}`,
        `/invoke/%E0%A4%A${name}`,
      ]) {
        const r = await send(open.url, "POST", path);
        assert.ok(r.status === 400 || r.status === 404, r.text.slice(0, 200));
        assert.ok(r.text.length < 1000, `${r.text.length} bytes answered`);
        assert.match(r.text, /characters\)/);
      }
    });
  });

  describe("responses the platform vouches for", () => {
    it("turns a function's 1xx or out-of-range status into 502 FN_BAD_RESPONSE", async () => {
      for (const fn of ["s101", "s100", "s700"]) {
        const r = await send(open.url, "GET", `/invoke/${fn}/`);
        assert.equal(r.status, 502, `${fn}: ${r.text}`);
        assert.equal(codeOf(r), "FN_BAD_RESPONSE");
      }
      // The connection stays plain HTTP: a second request on it is answered normally.
      const raw = await rawExchange(
        open.url,
        "GET /invoke/s101/ HTTP/1.1\r\nHost: localhost\r\n\r\nGET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
      );
      assert.match(raw, /^HTTP\/1\.1 502 /);
      assert.doesNotMatch(raw, /101 Switching|switching\?/);
      assert.match(raw, /\}\nHTTP\/1\.1 200 OK\r\n[\s\S]*\r\nok\n/);
    });

    it("sends 204, 304 and HEAD answers without a body or a Content-Length", async () => {
      for (const [method, fn, status] of [
        ["GET", "s204", 204],
        ["GET", "s304", 304],
        ["HEAD", "echo", 200],
      ] as const) {
        const raw = await rawExchange(
          open.url,
          `${method} /invoke/${fn}/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`,
        );
        const [head, ...rest] = raw.split("\r\n\r\n");
        assert.match(head!, new RegExp(`^HTTP/1\\.1 ${status} `), raw);
        assert.doesNotMatch(head!, /content-length|transfer-encoding/i, raw);
        assert.equal(rest.join(""), "", `no body after ${head}`);
      }
    });

    it("drops the platform's headers a function tries to set, on sync and async results", async () => {
      const r = await send(open.url, "GET", "/invoke/forge/", { "x-request-id": "mine-123" });
      assert.equal(r.status, 200);
      assert.equal(r.text, "forged?");
      assert.equal(r.headers["x-request-id"], "mine-123");
      assert.equal(r.headers["x-fennec-error"], undefined);
      assert.match(String(r.headers["x-fennec-start"]), /^(cold|warm)$/);
      assert.equal(r.headers["x-other"], "kept");

      const submitted = await request(`${open.url}/fa/default/forge`, { method: "POST" });
      const { callId } = submitted.json<{ callId: string }>();
      let result = await send(open.url, "GET", `/fa/calls/${callId}`);
      while (result.status === 202) {
        await sleep(20);
        result = await send(open.url, "GET", `/fa/calls/${callId}`);
      }
      assert.equal(result.status, 200, result.text);
      assert.equal(result.text, "forged?");
      assert.notEqual(result.headers["x-request-id"], "spoofed");
      assert.equal(result.headers["x-fennec-error"], undefined);
      assert.equal(result.headers["x-fennec-call-state"], "succeeded");
      assert.equal(result.headers["x-other"], "kept");
    });
  });

  describe("bounded memory under hostile load", () => {
    it("stops reading a large body after an early error and closes the connection", async () => {
      const total = 300 * 2 ** 20;
      for (const [server, head] of [
        [guarded, "POST /system/functions HTTP/1.1\r\nContent-Type: application/json\r\n"], // 401
        [open, "POST /nowhere HTTP/1.1\r\n"], // 404
      ] as const) {
        const u = new URL(server.url);
        const outcome = await new Promise<{ written: number; response: string }>((resolve) => {
          const socket = connect(Number(u.port), u.hostname);
          let written = 0;
          let response = "";
          let ended = false;
          const finish = () => {
            if (ended) return;
            ended = true;
            socket.destroy();
            resolve({ written, response });
          };
          socket.on("data", (c: Buffer) => (response += c.toString("latin1")));
          socket.on("error", finish);
          socket.on("close", finish);
          const chunk = Buffer.alloc(2 ** 20, 0x61);
          const pump = () => {
            while (!ended && written < total) {
              written += chunk.length;
              if (!socket.write(chunk)) return void socket.once("drain", pump);
            }
          };
          socket.once("connect", () => {
            socket.write(`${head}Host: localhost\r\nContent-Length: ${total}\r\n\r\n`);
            pump();
          });
        });
        assert.ok(outcome.written < total / 3, `the server read ${outcome.written} of ${total} bytes`);
        assert.match(outcome.response, /^HTTP\/1\.1 40[14] /);
        assert.match(outcome.response, /connection: close/i);
      }
    });

    it("disconnects a client that never finishes its request headers (slowloris)", async () => {
      const socket = await openSocket(guarded.url);
      socket.on("error", () => undefined);
      socket.write("GET /healthz HTTP/1.1\r\nHost: localhost\r\n");
      let received = "";
      socket.on("data", (c: Buffer) => (received += c.toString("latin1")));
      const drip = setInterval(() => socket.writable && socket.write("X-Slow: y\r\n"), 200);
      try {
        const closed = await Promise.race([
          new Promise<boolean>((r) => socket.once("close", () => r(true))),
          sleep(30_000).then(() => false),
        ]);
        assert.ok(closed, "the connection was still open after 30 s with a 1 s header timeout");
        assert.match(received, /^HTTP\/1\.1 408 |^$/);
      } finally {
        clearInterval(drip);
        socket.destroy();
      }
    });

    it("caps the number of open connections", async () => {
      const count = () => new Promise<number>((r) => guarded.fennec.server.getConnections((_e, n) => r(n)));
      // Start from no connections: earlier tests' clients keep theirs alive.
      guarded.fennec.server.closeIdleConnections();
      while ((await count()) > 0) await sleep(20);
      const kept: Socket[] = [];
      try {
        for (let i = 0; i < 3; i++) {
          const s = await openSocket(guarded.url);
          kept.push(s);
          assert.match(await statusLineOn(s), /^HTTP\/1\.1 200/);
        }
        const extra = await openSocket(guarded.url);
        kept.push(extra);
        assert.equal(await statusLineOn(extra), "closed", "a fourth connection is refused");
        // Once one ends, a new connection is served again.
        kept[0]!.destroy();
        while ((await count()) >= 3) await sleep(20);
        const again = await openSocket(guarded.url);
        kept.push(again);
        assert.match(await statusLineOn(again), /^HTTP\/1\.1 200/);
      } finally {
        for (const s of kept) s.destroy();
      }
    });

    it("keeps /stats and /metrics series only for functions that exist", async () => {
      assert.equal((await request(`${open.url}/invoke/hello/`)).status, 200);
      const stats = async () =>
        (await request(`${open.url}/stats`)).json<{ functions: Record<string, unknown> }>().functions;
      const metricsText = async () => (await request(`${open.url}/metrics`)).text;
      const series = (text: string) =>
        text.split("\n").filter((l) => l.startsWith("fennec_") && l.includes("function="));
      const before = {
        stats: Object.keys(await stats()).sort(),
        metrics: series(await metricsText()).length,
      };
      assert.ok(before.stats.includes("default/hello"));
      for (let i = 0; i < 200; i++) {
        const name = `ghost${i}-${Math.random().toString(36).slice(2)}`;
        assert.equal((await request(`${open.url}/invoke/${name}/`)).status, 404);
      }
      assert.deepEqual(Object.keys(await stats()).sort(), before.stats);
      const text = await metricsText();
      assert.doesNotMatch(text, /ghost/);
      assert.equal(series(text).length, before.metrics);

      // A deleted function's series go with it.
      const doc = await deployDoc("doomed");
      const json = { "content-type": "application/json" };
      assert.equal((await send(open.url, "POST", "/system/functions", json, doc)).status, 201);
      assert.equal((await request(`${open.url}/invoke/doomed`, { method: "POST", body: "x" })).status, 200);
      assert.ok("default/doomed" in (await stats()));
      assert.match(await metricsText(), /function="default\/doomed"/);
      assert.equal((await send(open.url, "DELETE", "/system/functions/doomed")).status, 202);
      assert.ok(!("default/doomed" in (await stats())));
      assert.doesNotMatch(await metricsText(), /function="default\/doomed"/);
    });
  });
});
