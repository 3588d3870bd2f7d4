import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { createServer, request as httpRequest, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import { request } from "../helpers/http.js";
import { CLI, copyExamples, EXAMPLES, ROOT, tempDir, WASM_FIXTURES } from "../helpers/paths.js";
import { addWasmFunction, startTestServer, type TestServer } from "../helpers/server.js";
import { GENEROUS_MS, waitFor } from "../helpers/wait.js";

const run = promisify(execFile);

async function fennec(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  // The caller's FENNEC_* settings must not leak into a test that does not set them.
  const { FENNEC_TOKEN: _t, FENNEC_URL: _u, ...inherited } = process.env;
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], {
      env: { ...inherited, ...env },
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** Starts `fennec serve` on a free port and resolves with its URL once it serves. */
function serve(registry: string): Promise<{ child: ChildProcess; url: string; log: () => string }> {
  const child = spawn(process.execPath, [CLI, "serve", "-r", registry, "--port", "0"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  return new Promise((resolve, reject) => {
    child.stderr.on("data", (d: Buffer) => {
      log += d.toString();
      const m = /on (http:\/\/127\.0\.0\.1:\d+)/.exec(log);
      if (m) resolve({ child, url: m[1]!, log: () => log });
    });
    child.once("exit", (code) => reject(new Error(`fennec serve exited early (${code}): ${log}`)));
  });
}

const exited = (child: ChildProcess) =>
  new Promise<number | null>((r) => {
    if (child.exitCode !== null || child.signalCode !== null) r(child.exitCode);
    else child.once("exit", (code) => r(code));
  });

/** Runs `fennec serve ARGS` that is expected to fail, and resolves with how it ended. */
async function serveFailing(args: string[]): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [CLI, "serve", ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  try {
    // Today's failure mode is hanging forever; the test's own timeout turns that into a failure.
    const code = await exited(child);
    return { code, stderr };
  } finally {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
      await exited(child);
    }
  }
}

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
}

/** A loopback proxy in front of a real Fennec that records what the CLI sends. */
async function recordingProxy(
  target: string,
): Promise<{ url: string; seen: Seen[]; close(): Promise<void> }> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    seen.push({ method: req.method!, url: req.url!, headers: req.headers });
    const up = httpRequest(new URL(req.url!, target), { method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode!, r.headers);
      r.pipe(res);
    });
    up.on("error", (err) => res.writeHead(502).end(err.message));
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

const TOKEN = "s3cret-admin-token";

describe("the fennec command", () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let registry: string;
  before(async () => {
    ({ dir, cleanup } = await tempDir());
    registry = await copyExamples(dir);
  });
  after(() => cleanup());

  it("explains itself: fennec --help and every subcommand's --help", async () => {
    const top = await fennec(["--help"]);
    assert.equal(top.code, 0);
    for (const cmd of ["serve", "invoke", "deploy", "ls", "stats", "nodes", "build", "calls"]) {
      assert.match(top.stdout, new RegExp(`\\n  ${cmd} `));
      const h = await fennec([cmd, "--help"]);
      assert.equal(h.code, 0, cmd);
      assert.match(h.stdout, new RegExp(`^fennec ${cmd}`), cmd);
    }
    const bad = await fennec(["frobnicate"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /unknown command/);
  });

  it("fennec --version and -v print the version of package.json", async () => {
    const { version } = JSON.parse(await readFile(join(ROOT, "package.json"), "utf8")) as { version: string };
    for (const flag of ["--version", "-v"]) {
      const r = await fennec([flag]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, `fennec ${version}\n`);
    }
  });

  it("serves a registry; invoke, deploy, ls and stats talk to it", async () => {
    const { child, url } = await serve(registry);
    try {
      const env = { FENNEC_URL: url };
      const hello = await fennec(["invoke", "hello"], env);
      assert.equal(hello.code, 0, hello.stderr);
      assert.match(hello.stdout, /Hello from Fennec/);
      const echo = await fennec(["invoke", "echo", "-d", "via cli"], env);
      assert.equal(echo.stdout, "via cli");
      const deployed = await fennec(["deploy", "dana/hi", join(EXAMPLES, "hello", "hello.wasm")], env);
      assert.equal(deployed.code, 0, deployed.stderr);
      assert.match((await fennec(["invoke", "dana/hi"], env)).stdout, /Hello/);
      const dirDeploy = await fennec(["deploy", "fib2", join(EXAMPLES, "fib")], env);
      assert.equal(dirDeploy.code, 0, dirDeploy.stderr);
      assert.match((await fennec(["invoke", "fib2", "?n=12"], env)).stdout, /fib\(12\) = 144/);
      const ls = await fennec(["ls"], env);
      assert.match(ls.stdout, /default\/hello\s+wasm\s+ready/);
      assert.match(ls.stdout, /dana\/hi/);
      const stats = JSON.parse((await fennec(["stats"], env)).stdout) as { NumbInitVms: number };
      assert.ok(stats.NumbInitVms >= 3);
      const missing = await fennec(["invoke", "ghost"], env);
      assert.equal(missing.code, 1);
      assert.match(missing.stderr, /404 \(FUNCTION_NOT_FOUND\)/);
      const down = await fennec(["ls"], { FENNEC_URL: "http://127.0.0.1:1" });
      assert.equal(down.code, 1);
      assert.match(down.stderr, /cannot reach Fennec/);
    } finally {
      child.kill("SIGINT");
      await exited(child);
    }
  });

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    it(`drains calls in flight on ${signal}, then exits cleanly leaving nothing behind`, async () => {
      const { child, url, log } = await serve(registry);
      try {
        // fib(42) runs ≈ 1 s on a quiet machine (fib(32) ended before a first /stats poll could see it).
        const slow = request(`${url}/invoke/fib/?n=42`);
        // The signal must come while the call runs: wait until Fennec reports it busy.
        await Promise.race([
          waitFor("the call to fib to be running", async () => {
            const stats = (await request(`${url}/stats`)).json<{
              instances: Record<string, { busy: number }>;
            }>();
            return (stats.instances["default/fib"]?.busy ?? 0) > 0;
          }),
          slow.then(() => {
            throw new Error("the call ended before it was seen running: it is too short to test draining");
          }),
        ]);
        const code = exited(child);
        child.kill(signal);
        const r = await slow;
        assert.equal(r.status, 200, r.text);
        assert.match(r.text, /fib\(42\) = 267914296/);
        assert.equal(await code, 0, log());
        assert.match(log(), /draining/);
        await assert.rejects(fetch(`${url}/healthz`), "no longer listening");
        const tmp = (await readdir(join(registry, "fib"))).filter((n) => n.startsWith(".fennec-tmp-"));
        assert.deepEqual(tmp, []);
      } finally {
        // A failed assertion must not leave the server running: the test file would never end.
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      }
    });
  }

  describe("against a Fennec with an admin token", () => {
    let server: TestServer;
    let env: Record<string, string>;
    before(async () => {
      server = await startTestServer({ token: TOKEN });
      // env.wasm prints the request method and every HTTP_* variable it was given.
      await addWasmFunction(server.registry, "showenv", "env.wasm");
      await addWasmFunction(server.registry, "alice/showenv", "env.wasm");
      env = { FENNEC_URL: server.url, FENNEC_TOKEN: TOKEN };
    });
    after(() => server.close());

    it("never sends the admin token to a function, while admin commands still use it", async () => {
      for (const target of ["showenv", "default/showenv", "alice/showenv"]) {
        const r = await fennec(["invoke", target, "-H", "X-Probe: reached"], env);
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stdout, /HTTP_X_PROBE=reached/, "the function sees request headers");
        assert.doesNotMatch(r.stdout, /HTTP_AUTHORIZATION/i, target);
        assert.ok(!r.stdout.includes(TOKEN), `${target} was sent the admin token`);
      }
      const ls = await fennec(["ls"], env);
      assert.equal(ls.code, 0, ls.stderr);
      assert.match(ls.stdout, /alice\/showenv/);
      const noToken = await fennec(["ls"], { FENNEC_URL: server.url });
      assert.equal(noToken.code, 1);
      assert.match(noToken.stderr, /HTTP 401: UNAUTHORIZED/);
    });

    it("sends deploys as application/json and uploads as application/wasm, with no Origin", async () => {
      const proxy = await recordingProxy(server.url);
      try {
        const via = { ...env, FENNEC_URL: proxy.url };
        const up = await fennec(["deploy", "bob/hi", join(EXAMPLES, "hello", "hello.wasm")], via);
        assert.equal(up.code, 0, up.stderr);
        const doc = await fennec(["deploy", "bob/fib", join(EXAMPLES, "fib")], via);
        assert.equal(doc.code, 0, doc.stderr);
        const called = await fennec(["invoke", "bob/hi"], via);
        assert.equal(called.code, 0, called.stderr);
        assert.match(called.stdout, /Hello/);
        const [upload, deploy, invoke] = proxy.seen;
        assert.equal(proxy.seen.length, 3);
        assert.deepEqual([upload!.method, upload!.url], ["PUT", "/f/bob/hi"]);
        assert.equal(upload!.headers["content-type"], "application/wasm");
        assert.deepEqual([deploy!.method, deploy!.url], ["POST", "/system/functions"]);
        assert.equal(deploy!.headers["content-type"], "application/json");
        for (const admin of [upload!, deploy!]) assert.equal(admin.headers.authorization, `Bearer ${TOKEN}`);
        assert.deepEqual([invoke!.method, invoke!.url], ["POST", "/f/bob/hi"]);
        assert.equal(invoke!.headers.authorization, undefined);
        for (const s of proxy.seen) {
          assert.equal(s.headers.origin, undefined, `${s.method} ${s.url}`);
          assert.notEqual(s.headers["sec-fetch-site"], "cross-site", `${s.method} ${s.url}`);
        }
      } finally {
        await proxy.close();
      }
    });

    it("honours -X exactly, and refuses a method the call route of a user's function cannot carry", async () => {
      const method = async (args: string[]) => {
        const r = await fennec(["invoke", ...args], env);
        assert.equal(r.code, 0, r.stderr);
        return /REQUEST_METHOD=(\S*)/.exec(r.stdout)?.[1];
      };
      assert.equal(await method(["showenv"]), "GET");
      assert.equal(await method(["showenv", "-d", "x"]), "POST");
      assert.equal(await method(["showenv", "-X", "PUT", "-d", "x"]), "PUT");
      assert.equal(await method(["default/showenv", "-X", "DELETE"]), "DELETE");
      assert.equal(await method(["default/showenv", "-X", "PATCH", "-d", "x"]), "PATCH");
      assert.equal(await method(["alice/showenv"]), "POST");
      assert.equal(await method(["alice/showenv", "-X", "POST"]), "POST");
      for (const m of ["GET", "PUT"]) {
        const refused = await fennec(["invoke", "alice/showenv", "-X", m, "-d", "junk"], env);
        assert.equal(refused.code, 2, `-X ${m}: ${refused.stdout}`);
        assert.match(refused.stderr, /can only be called with POST/);
        assert.equal(refused.stdout, "");
      }
      // The refused PUT did not upload "junk" as alice/showenv's module.
      assert.equal(await method(["alice/showenv"]), "POST");
    });

    it("exits non-zero on every error: 2 for a wrong command line, 1 for a failure", async () => {
      const usage: string[][] = [
        [],
        ["invoke"],
        ["invoke", "a", "b", "c"],
        ["invoke", "a/b/c"],
        ["invoke", "showenv", "--token", TOKEN],
        ["invoke", "showenv", "-H", "no colon"],
        ["deploy"],
        ["deploy", "a", "b", "c"],
        ["deploy", join(EXAMPLES, "hello", "hello.wasm")],
        ["ls", "extra"],
        ["stats", "--bogus"],
        ["serve", "--port", "http"],
        ["serve", "--port", "70000"],
        ["serve", "--log-level", "loud"],
      ];
      for (const args of usage) {
        const r = await fennec(args, env);
        assert.equal(r.code, 2, `fennec ${args.join(" ")}: ${r.stderr}`);
        assert.notEqual(r.stderr, "", `fennec ${args.join(" ")} says why`);
      }
      const failures: Array<[string[], RegExp, Record<string, string>?]> = [
        [["invoke", "ghost"], /HTTP 404/],
        [["ls"], /HTTP 401/, { FENNEC_TOKEN: "" }],
        [["deploy", "x", join(dir, "no-such-file")], /does not exist/],
        [["deploy", "x", join(EXAMPLES, "hello", "src")], /function\.toml does not exist/],
        [["deploy", "bad", join(WASM_FIXTURES, "not-wasm.wasm")], /HTTP 4\d\d: MODULE_INVALID/],
        [["stats"], /cannot reach Fennec/, { FENNEC_URL: "http://127.0.0.1:1" }],
        [["invoke", "hello"], /cannot reach Fennec/, { FENNEC_URL: "http://127.0.0.1:1" }],
        [["invoke", "showenv", "-d", `@${join(dir, "no-such-file")}`], /cannot read/],
        [["serve", "-r", join(dir, "no-such-registry")], /does not exist/],
      ];
      for (const [args, why, overrides] of failures) {
        const r = await fennec(args, { ...env, ...overrides });
        assert.equal(r.code, 1, `fennec ${args.join(" ")}: ${r.stderr}`);
        assert.match(r.stderr, why, `fennec ${args.join(" ")}`);
      }
    });

    it("deploys a function directory, naming each subdirectory and hidden file it does not send", async () => {
      const fnDir = join(dir, "nested");
      await mkdir(join(fnDir, "src", "deeper"), { recursive: true });
      await writeFile(join(fnDir, "env.wasm"), await readFile(join(WASM_FIXTURES, "env.wasm")));
      await writeFile(
        join(fnDir, "function.toml"),
        'keepalive = 30\nconcurrent-requests = 1\n[wasm]\nmodule = "env.wasm"\nmemory = 16\n',
      );
      await writeFile(join(fnDir, "notes.txt"), "sent along");
      await writeFile(join(fnDir, "src", "main.c"), "int main(void) { return 0; }\n");
      await writeFile(join(fnDir, "src", "deeper", "x.h"), "\n");
      await writeFile(join(fnDir, ".env"), "SECRET=1\n");
      // One argument: the directory's own name is the function's name.
      const r = await fennec(["deploy", fnDir], env);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /deployed default\/nested/);
      assert.match(r.stderr, /not sent: .*nested\/src\//);
      assert.match(r.stderr, /not sent: .*nested\/\.env/);
      assert.match(r.stderr, /only the regular files directly in/);
      const onServer = (await readdir(join(server.registry, "nested"))).filter((n) => !n.startsWith("."));
      assert.deepEqual(onServer.sort(), ["env.wasm", "function.toml", "notes.txt"]);
      const called = await fennec(["invoke", "nested"], env);
      assert.equal(called.code, 0, called.stderr);
      assert.match(called.stdout, /REQUEST_METHOD=GET/);
    });
  });

  describe("fennec serve that cannot serve exits at once with one clear line", () => {
    it("a port in use", { timeout: 4 * GENEROUS_MS }, async () => {
      const holder = createServer();
      await new Promise<void>((r) => holder.listen(0, "127.0.0.1", () => r()));
      const port = (holder.address() as AddressInfo).port;
      try {
        const r = await serveFailing(["-r", registry, "--port", String(port)]);
        assert.equal(r.code, 1, r.stderr);
        // One line says why, last; log lines of start-up (another test's debris found in a shared
        // run root, say) may come before it.
        const said = r.stderr
          .trim()
          .split("\n")
          .filter((l) => l.startsWith("fennec:"));
        assert.equal(said.length, 1, r.stderr);
        assert.ok(r.stderr.trim().endsWith(said[0]!), r.stderr);
        assert.match(said[0]!, new RegExp(`^fennec: cannot listen on 127\\.0\\.0\\.1:${port}: .*EADDRINUSE`));
      } finally {
        await new Promise((r) => holder.close(r));
      }
    });

    it("an address that is not this host's", { timeout: 4 * GENEROUS_MS }, async () => {
      // 192.0.2.0/24 is TEST-NET-1: never a local address.
      const r = await serveFailing(["-r", registry, "--port", "0", "--host", "192.0.2.1"]);
      assert.equal(r.code, 1, r.stderr);
      const last = r.stderr.trim().split("\n").at(-1)!;
      assert.match(last, /^fennec: cannot listen on 192\.0\.2\.1:0: .*EADDRNOTAVAIL\)$/);
    });

    it("a port out of range", { timeout: 4 * GENEROUS_MS }, async () => {
      const r = await serveFailing(["-r", registry, "--port", "65536"]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /--port expects a whole number from 0 to 65535/);
    });
  });
});
