import assert from "node:assert/strict";
import { copyFile, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { startFennec } from "../../src/main.js";
import { errorCode, request } from "../helpers/http.js";
import { copyExamples, ROOT, tempDir } from "../helpers/paths.js";

describe("[process] functions through the gateway", () => {
  it("serves them when the process sandbox is enabled, and refuses them otherwise", async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const registry = await copyExamples(dir);
      const fn = join(registry, "proc");
      await mkdir(fn);
      await copyFile(join(ROOT, "test", "fixtures", "process", "server.mjs"), join(fn, "server.mjs"));
      await writeFile(
        join(fn, "function.toml"),
        `keepalive = 30\nconcurrent-requests = 4\n[process]\ncommand = [${JSON.stringify(process.execPath)}, "server.mjs", "echo"]\n`,
      );
      for (const enabled of [true, false]) {
        const fennec = await startFennec({
          registry,
          port: 0,
          logLevel: "silent",
          cacheDir: join(dir, "cache"),
          driverSettings: { process: enabled },
        });
        try {
          const r = await request(`${fennec.url}/invoke/proc/some/path?q=1`, {
            method: "PUT",
            body: "to a process",
          });
          if (enabled) {
            assert.equal(r.status, 200, r.text);
            assert.equal(r.text, "to a process");
            assert.equal(r.headers.get("x-path"), "/some/path");
            assert.equal(r.headers.get("x-query"), "q=1");
            assert.equal(r.headers.get("x-method"), "PUT");
          } else {
            assert.equal(errorCode(r), "DRIVER_UNAVAILABLE");
          }
        } finally {
          await fennec.close();
        }
      }
    } finally {
      await cleanup();
    }
  });

  it("answers for an instance that dies mid-request with FN_CRASHED and its exit code in the details", async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const registry = await copyExamples(dir);
      const fn = join(registry, "dies");
      await mkdir(fn);
      await copyFile(join(ROOT, "test", "fixtures", "process", "server.mjs"), join(fn, "server.mjs"));
      // The fixture's `fail` mode calls process.exit(3) when a request arrives.
      await writeFile(
        join(fn, "function.toml"),
        `keepalive = 30\nconcurrent-requests = 1\n[process]\ncommand = [${JSON.stringify(process.execPath)}, "server.mjs", "fail"]\n`,
      );
      const fennec = await startFennec({
        registry,
        port: 0,
        logLevel: "silent",
        cacheDir: join(dir, "cache"),
        driverSettings: { process: true },
      });
      try {
        const r = await request(`${fennec.url}/invoke/dies/`);
        assert.equal(errorCode(r), "FN_CRASHED", r.text);
        const body = JSON.parse(r.text) as { error: { details?: Record<string, unknown> } };
        assert.deepEqual(body.error.details, { exitCode: 3, signal: null });
      } finally {
        await fennec.close();
      }
    } finally {
      await cleanup();
    }
  });

  it("runs fetch-style handlers: the bundled example, a throwing one, and one that does not build", async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const registry = await copyExamples(dir);
      const add = async (name: string, source: string) => {
        await mkdir(join(registry, name));
        await writeFile(join(registry, name, "handler.ts"), source);
        await writeFile(
          join(registry, name, "function.toml"),
          'keepalive = 30\nconcurrent-requests = 2\n[process]\nhandler = "handler.ts"\n',
        );
      };
      await add("throws", 'export default { fetch(): Response { throw new Error("boom"); } };\n');
      await add("broken", "export default { fetch( {\n");
      await add(
        "cookies",
        `export default {
  async fetch(request: Request): Promise<Response> {
    const headers = new Headers({ "x-method": request.method });
    headers.append("set-cookie", "a=1");
    headers.append("set-cookie", "b=2");
    return new Response(await request.text(), { status: 201, headers });
  },
};
`,
      );
      const fennec = await startFennec({
        registry,
        port: 0,
        logLevel: "silent",
        cacheDir: join(dir, "cache"),
        driverSettings: { process: true },
      });
      try {
        const hello = await request(`${fennec.url}/invoke/hello-process/?name=ann`);
        assert.equal(hello.status, 200, hello.text);
        assert.equal(hello.text, "hello from Fennec (a process), ann!\n");
        const thrown = await request(`${fennec.url}/invoke/throws/`);
        assert.equal(thrown.status, 500);
        assert.match(thrown.text, /handler error: boom/);
        const broken = await request(`${fennec.url}/invoke/broken/`);
        assert.equal(errorCode(broken), "FN_BAD_MODULE");
        assert.match(broken.text, /cannot build the handler at .*handler\.ts:\d+:\d+/);
        const res = await fetch(`${fennec.url}/invoke/cookies/`, { method: "POST", body: "posted" });
        assert.equal(res.status, 201);
        assert.equal(await res.text(), "posted");
        assert.equal(res.headers.get("x-method"), "POST");
        assert.deepEqual(res.headers.getSetCookie(), ["a=1", "b=2"]);
      } finally {
        await fennec.close();
      }
    } finally {
      await cleanup();
    }
  });
});
