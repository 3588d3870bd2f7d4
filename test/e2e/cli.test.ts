import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import { request } from "../helpers/http.js";
import { CLI, copyExamples, EXAMPLES, tempDir } from "../helpers/paths.js";

const run = promisify(execFile);

async function fennec(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], {
      env: { ...process.env, ...env },
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
    child.stderr!.on("data", (d: Buffer) => {
      log += d.toString();
      const m = /on (http:\/\/127\.0\.0\.1:\d+)/.exec(log);
      if (m) resolve({ child, url: m[1]!, log: () => log });
    });
    child.once("exit", (code) => reject(new Error(`fennec serve exited early (${code}): ${log}`)));
  });
}

const exited = (child: ChildProcess) =>
  new Promise<number | null>((r) => child.once("exit", (code) => r(code)));

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
    for (const cmd of ["serve", "invoke", "deploy", "ls", "stats", "build"]) {
      assert.match(top.stdout, new RegExp(`\\n  ${cmd} `));
      const h = await fennec([cmd, "--help"]);
      assert.equal(h.code, 0, cmd);
      assert.match(h.stdout, new RegExp(`^fennec ${cmd}`), cmd);
    }
    const bad = await fennec(["frobnicate"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /unknown command/);
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
      const slow = request(`${url}/invoke/fib/?n=32`);
      await new Promise((r) => setTimeout(r, 150));
      const code = exited(child);
      child.kill(signal);
      const r = await slow;
      assert.equal(r.status, 200, r.text);
      assert.match(r.text, /fib\(32\) = 2178309/);
      assert.equal(await code, 0, log());
      assert.match(log(), /draining/);
      await assert.rejects(fetch(`${url}/healthz`), "no longer listening");
      const tmp = (await readdir(join(registry, "fib"))).filter((n) => n.startsWith(".fennec-tmp-"));
      assert.deepEqual(tmp, []);
    });
  }
});
