import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { appendFile, mkdir, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import type { FunctionConfig } from "../../src/config/function-config.js";
import { FennecError } from "../../src/core/errors.js";
import { ContainerDriver } from "../../src/sandbox/drivers/container/driver.js";
import { LABEL } from "../../src/sandbox/drivers/container/engine.js";
import { startTime } from "../../src/core/process-identity.js";
import { runRoot } from "../../src/sandbox/run-dir.js";
import { testConfig } from "../helpers/config.js";
import { importFixtureImage, startDockerd, type TestDockerd } from "../helpers/docker.js";
import { request } from "../helpers/http.js";
import { emptyGet, loopbackTarget, startInstance } from "../helpers/instance.js";
import { CLI, copyExamples, ROOT, tempDir } from "../helpers/paths.js";
import { startTestServer, type TestServer } from "../helpers/server.js";
import { assertLeastPrivileged, type Privileges } from "../helpers/privileges.js";
import { bytesOf } from "../helpers/body.js";
import { waitFor } from "../helpers/wait.js";

// A real dockerd of the test's own (root and docker.io, which .ci/run installs; under CI=true a
// missing tool fails): the container driver's own cases, and the examples through the gateway.
let dockerd: TestDockerd;
let image: string;
const ready = (async () => {
  dockerd = await startDockerd();
  image = await importFixtureImage(dockerd);
})();
before(() => ready);
after(async () => {
  await ready.catch(() => undefined);
  await dockerd?.stop();
});

const fn = (
  mode: string,
  over: Partial<Extract<FunctionConfig["sandbox"], { kind: "container" }>> = {},
): FunctionConfig =>
  testConfig({
    id: { user: "default", name: mode },
    key: `default/${mode}`,
    dir: join(ROOT, "test", "fixtures", "process"),
    timeoutMs: 20_000,
    sandbox: {
      kind: "container",
      image,
      handler: undefined,
      memoryMiB: 256,
      runtime: undefined,
      env: { FENNEC_TEST_MODE: mode },
      pids: 1024,
      network: "none",
      ...over,
    },
  });

/** What the `privileges` probe (test/fixtures/process/server.mjs) reports from inside. */
async function rejectsWith(p: Promise<unknown>, code: string, message?: RegExp): Promise<FennecError> {
  const err = await p.then(
    () => assert.fail(`expected ${code}`),
    (e: unknown) => e,
  );
  assert.ok(err instanceof FennecError, String(err));
  assert.equal(err.code, code, err.message);
  if (message) assert.match(err.message, message);
  return err;
}

for (const runtime of ["runc", "runsc"] as const) {
  describe(`container driver specialties (docker, ${runtime})`, () => {
    let driver: ContainerDriver;
    let target: Awaited<ReturnType<typeof loopbackTarget>>;
    before(async () => {
      await ready;
      driver = new ContainerDriver({ socketPath: dockerd.socketPath });
      target = await loopbackTarget();
    });
    after(() => target.close());
    const start = (config: FunctionConfig) => startInstance(driver, config, { startTimeoutMs: 60_000 });

    it("has a read-only root but for /tmp, and no network", async () => {
      const inst = await start(fn("probe", { runtime }));
      try {
        const result = JSON.parse(
          (await bytesOf((await inst.invoke(emptyGet(`port=${target.port}`))).body)).toString(),
        ) as Record<string, string>;
        assert.equal(result["/tmp/written.txt"], "written");
        // Read-only, and not the unprivileged user's to write either (gVisor checks that first).
        for (const path of ["/fn/written.txt", "/usr/written.txt"])
          assert.ok(["EROFS", "EACCES"].includes(result[path]!), `${path}: ${result[path]}`);
        assert.notEqual(result["network"], "connected");
      } finally {
        await inst.destroy();
      }
    });

    it("runs as nobody with no capabilities, no new privileges and Docker's seccomp profile", async () => {
      const inst = await start(fn("privileges", { runtime }));
      let seen: Privileges;
      let onHost: string;
      try {
        seen = JSON.parse((await bytesOf((await inst.invoke(emptyGet())).body)).toString()) as Privileges;
        const info = await dockerd.engine.api.getContainer(`fennec-${inst.id}`).inspect();
        // @types/dockerode types SecurityOpt as any; the Engine API sends a list of strings.
        const securityOpt = info.HostConfig.SecurityOpt as string[] | undefined;
        assert.equal(securityOpt?.includes("seccomp=unconfined") ?? false, false);
        onHost = readFileSync(`/proc/${info.State.Pid}/status`, "utf8");
      } finally {
        await inst.destroy();
      }
      assertLeastPrivileged(seen, runtime, onHost);
    });

    it("cannot redirect Fennec's connections by swapping its socket for a symlink", async () => {
      const { dir, cleanup } = await tempDir("fennec-decoy-");
      let connections = 0;
      const decoy = createServer((sock) => {
        connections++;
        sock.end("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\ndecoy");
      });
      const decoyPath = join(dir, "decoy.sock");
      await new Promise<void>((r) => decoy.listen(decoyPath, () => r()));
      const inst = await start(fn("swap-socket", { runtime })).catch(async (err: unknown) => {
        await new Promise((r) => decoy.close(r));
        await cleanup();
        throw err;
      });
      try {
        const swapped = await inst.invoke(emptyGet(`target=${encodeURIComponent(decoyPath)}`));
        assert.equal((await bytesOf(swapped.body)).toString(), "swapped");
        const next = await inst.invoke(emptyGet());
        assert.equal((await bytesOf(next.body)).toString(), "served by the function");
        assert.equal(connections, 0, "Fennec never connected to the host socket");
      } finally {
        await inst.destroy();
        await new Promise((r) => decoy.close(r));
        await cleanup();
      }
    });

    it("reports going over the memory limit as FN_OOM", async () => {
      const inst = await start(fn("alloc", { runtime, memoryMiB: 96 }));
      try {
        await rejectsWith(inst.invoke(emptyGet()), "FN_OOM", /memory limit of 96 MiB/);
      } finally {
        await inst.destroy();
      }
    });

    it("stops a fork bomb at the pids limit", async () => {
      // runsc counts the Sentry's own threads against the limit (feasibility §7): give it room.
      const inst = await start(fn("fork", { runtime, pids: runtime === "runsc" ? 160 : 40 }));
      try {
        const res = await inst.invoke(emptyGet()).then(
          async (r) => Number((await bytesOf(r.body)).toString()),
          (err: unknown) => err,
        );
        if (typeof res === "number") assert.ok(res < 200, `started ${res} processes`);
        else assert.ok(res instanceof FennecError && res.code.startsWith("FN_"), String(res));
      } finally {
        await inst.destroy();
      }
    });

    it("fails a function that crashes at start with FN_CRASHED and its output", async () => {
      await rejectsWith(start(fn("crash-at-start", { runtime })), "FN_CRASHED", /missing configuration/);
    });
  });
}

describe("container driver: bad input and cleanup", () => {
  let driver: ContainerDriver;
  before(async () => {
    await ready;
    driver = new ContainerDriver({ socketPath: dockerd.socketPath });
  });

  const containers = () => dockerd.engine.api.listContainers({ all: true });

  it("times out a function that never becomes ready and removes its container", async () => {
    const before = (await containers()).length;
    const inst = startInstance(driver, fn("never-ready"), { startTimeoutMs: 1500 });
    await rejectsWith(inst, "FN_INIT_TIMEOUT");
    // The caller is answered at the deadline; the container is removed right after.
    // Up to a minute: CI runs on a busy machine.
    for (let i = 0; i < 600 && (await containers()).length !== before; i++)
      await new Promise((r) => setTimeout(r, 100));
    assert.equal((await containers()).length, before);
  });

  it("names a missing image, and pulls nothing", async () => {
    await rejectsWith(
      startInstance(driver, fn("echo", { image: "fennec-test/absent:1" })),
      "FN_BAD_MODULE",
      /fennec-test\/absent:1 is not on the Docker engine/,
    );
  });

  it("names the package of a runtime the engine does not have", async () => {
    await rejectsWith(
      startInstance(driver, fn("echo", { runtime: "kata" })),
      "SANDBOX_START_FAILED",
      /no runtime "kata".*apt-get install kata.*daemon\.json/,
    );
  });

  it("refuses a gVisor runtime that would ignore Docker's seccomp profile (no --oci-seccomp)", async () => {
    await rejectsWith(
      startInstance(driver, fn("echo", { runtime: "runsc-no-seccomp" })),
      "SANDBOX_START_FAILED",
      /runsc-no-seccomp" is gVisor without --oci-seccomp.*daemon\.json/,
    );
  });

  it("says clearly when the Docker engine is down", async () => {
    const down = new ContainerDriver({ socketPath: join(dockerd.dir, "nothing-here.sock") });
    await rejectsWith(startInstance(down, fn("echo")), "BACKEND_DOWN", /cannot be reached.*docker\.io/);
  });

  it("removes containers of a crashed Fennec at start, keeps a live one's", async () => {
    const make = (labels: Record<string, string>, name: string) =>
      dockerd.engine.api.createContainer({
        name,
        Image: image,
        Labels: { [LABEL.owner]: runRoot("container"), ...labels },
        HostConfig: { NetworkMode: "none" },
      });
    const parentStart = (await startTime(process.ppid))!;
    const dead = await make({ [LABEL.pid]: String(2 ** 22 + 1) }, "fennec-stale-dead"); // above pid_max
    // A live PID that is not the process that made the container (a recycled PID).
    const recycled = await make(
      { [LABEL.pid]: String(process.ppid), [LABEL.pidStart]: String(Number(parentStart) - 1) },
      "fennec-stale-recycled",
    );
    const live = await make(
      { [LABEL.pid]: String(process.ppid), [LABEL.pidStart]: parentStart },
      "fennec-stale-live",
    );
    try {
      await driver.cleanupStale();
      const names = (await containers()).flatMap((c) => c.Names);
      assert.ok(!names.includes("/fennec-stale-dead"), names.join());
      assert.ok(!names.includes("/fennec-stale-recycled"), names.join());
      assert.ok(names.includes("/fennec-stale-live"), names.join());
    } finally {
      await dead.remove({ force: true }).catch(() => undefined);
      await recycled.remove({ force: true }).catch(() => undefined);
      await live.remove({ force: true });
    }
  });
});

describe("Docker examples through the gateway", () => {
  let s: TestServer;
  before(async () => {
    await ready;
    s = await startTestServer({
      startTimeoutMs: 60_000,
      driverSettings: { "docker-host": dockerd.socketPath },
    });
  });
  after(() => s.close());

  for (const [name, runtime] of [
    ["hello-docker", "runc"],
    ["hello-docker-runsc", "gVisor"],
  ] as const) {
    it(`serves ${name}: the fetch handler in an imported image`, async () => {
      const cold = await request(`${s.url}/invoke/${name}/?name=docker`);
      assert.equal(cold.status, 200, cold.text);
      assert.equal(cold.text, `hello from Fennec (a Docker container on ${runtime}), docker!\n`);
      const warm = await request(`${s.url}/invoke/${name}/`);
      assert.equal(warm.headers.get("x-fennec-start"), "warm");
      assert.match(warm.text, /hello/);
    });
  }

  it("removes every container and run directory when Fennec stops", async () => {
    const ids = async () =>
      (await dockerd.engine.ownContainers(runRoot("container"))).map((c) => c.Id).sort();
    const dirs = () => readdirSync(runRoot("container")).sort();
    const [containersBefore, dirsBefore] = [await ids(), dirs()];
    const other = await startTestServer({ driverSettings: { "docker-host": dockerd.socketPath } });
    assert.equal((await request(`${other.url}/invoke/hello-docker/`)).status, 200);
    assert.equal((await ids()).length, containersBefore.length + 1);
    await other.close();
    assert.deepEqual(await ids(), containersBefore);
    assert.deepEqual(dirs(), dirsBefore);
  });

  it("keeps serving other backends while the Docker engine is down", async () => {
    const down = await startTestServer({
      driverSettings: { "docker-host": join(dockerd.dir, "nothing-here.sock") },
    });
    try {
      const docker = await request(`${down.url}/invoke/hello-docker/`);
      assert.equal(docker.status, 503, docker.text);
      assert.equal(docker.headers.get("x-fennec-error"), "BACKEND_DOWN");
      const wasm = await request(`${down.url}/invoke/echo/`, { method: "POST", body: "alive" });
      assert.equal(wasm.status, 200, wasm.text);
      assert.equal(wasm.text, "alive");
    } finally {
      await down.close();
    }
  });
});

describe("function logs of a [container] function", () => {
  const token = "container-logs-token";
  let s: TestServer;
  before(async () => {
    await ready;
    s = await startTestServer({ token, driverSettings: { "docker-host": dockerd.socketPath } });
    const dir = join(s.registry, "clog");
    await mkdir(dir);
    await writeFile(
      join(dir, "function.toml"),
      `keepalive = 30\nconcurrent-requests = 1\n[container]\nimage = "${image}"\nenv = { FENNEC_TEST_MODE = "log" }\n`,
    );
  });
  after(() => s.close());

  it("keeps what the container writes to stdout and stderr as lines of its call", async () => {
    for (const body of ["delta", "echo"]) {
      const r = await request(`${s.url}/invoke/clog`, { method: "POST", body });
      assert.equal(r.status, 200, r.text);
      const id = r.headers.get("x-call-id")!;
      // Waited for by function, not by call: a line attributed to no call (or another) must show.
      const lines = await waitFor(`the log lines of ${body}`, async () => {
        const reply = await request(`${s.url}/system/logs?function=clog`, {
          headers: { authorization: `Bearer ${token}` },
        });
        assert.equal(reply.status, 200, reply.text);
        const all = reply.text
          .split("\n")
          .filter((l) => l !== "")
          .map((l) => JSON.parse(l) as { stream: string; text: string; callId?: string })
          .filter((m) => m.text.endsWith(`: ${body}`));
        return all.length >= 2 ? all : undefined;
      });
      assert.deepEqual(lines.map((m) => [m.stream, m.text, m.callId]).sort(), [
        ["stderr", `stderr: ${body}`, id],
        ["stdout", `stdout: ${body}`, id],
      ]);
    }
  });
});

describe("handler images: one per function, older builds removed", () => {
  let driver: ContainerDriver;
  let dir: string;
  let cleanup: () => Promise<void>;
  const handlerFn = (revision: string): FunctionConfig =>
    testConfig({
      id: { user: "default", name: "rebuilt" },
      key: "default/rebuilt",
      dir,
      file: join(dir, "function.toml"),
      revision,
      timeoutMs: 20_000,
      sandbox: {
        kind: "container",
        image: undefined,
        handler: join(dir, "handler.js"),
        memoryMiB: 128,
        runtime: undefined,
        env: {},
        pids: 256,
        network: "none",
      },
    });
  const tags = async () =>
    (await dockerd.engine.api.listImages({ filters: { reference: ["fennec-fn/default/rebuilt"] } }))
      .flatMap((i) => i.RepoTags ?? [])
      .sort();
  before(async () => {
    await ready;
    driver = new ContainerDriver({ socketPath: dockerd.socketPath });
    ({ dir, cleanup } = await tempDir("fennec-rebuilt-"));
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "handler.js"), 'export default { fetch: () => new Response("v1") };\n');
  });
  after(() => cleanup());

  it("removes the old image when a function's image is rebuilt for a new digest; one in use when its container goes", async () => {
    const v1 = await driver.image(handlerFn("v1"));
    const inst = await startInstance(driver, handlerFn("v1"), { startTimeoutMs: 60_000 });
    await writeFile(join(dir, "handler.js"), 'export default { fetch: () => new Response("v2") };\n');
    const v2 = await driver.image(handlerFn("v2"));
    assert.notEqual(v2, v1);
    assert.deepEqual(await tags(), [v1, v2].sort(), "the old image stays while a container runs on it");
    assert.equal((await bytesOf((await inst.invoke(emptyGet())).body)).toString(), "v1");
    await inst.destroy();
    assert.deepEqual(await tags(), [v2], "removed with its last container");

    await writeFile(join(dir, "handler.js"), 'export default { fetch: () => new Response("v3") };\n');
    const v3 = await driver.image(handlerFn("v3"));
    assert.deepEqual(await tags(), [v3], "an unused old image goes at once");
    assert.equal(readdirSync(join(dir, ".fennec", "rootfs")).length, 1, "and its root filesystem");
  });
});

describe("fennec build: roots and images ahead of time", () => {
  const run = promisify(execFile);
  let dir: string;
  let cleanup: () => Promise<void>;
  let registry: string;
  const build = async (dockerHost: string, ...fns: string[]) => {
    const r = await run(process.execPath, [CLI, "build", "-r", registry, ...fns], {
      env: { ...process.env, DOCKER_HOST: `unix://${dockerHost}` },
    }).catch((e: { stdout: string; stderr: string; code: number }) => e);
    return r.stdout;
  };
  before(async () => {
    await ready;
    ({ dir, cleanup } = await tempDir("fennec-build-"));
    registry = await copyExamples(dir);
  });
  after(() => cleanup());

  it("builds each [oci] handler's root and each [container] handler's image, with progress lines", async () => {
    const out = await build(
      dockerd.socketPath,
      "hello-runc",
      "hello-runsc",
      "hello-docker",
      "hello-docker-runsc",
    );
    for (const name of ["hello-runc", "hello-runsc"]) {
      const root = new RegExp(`ok     default/${name}: oci root filesystem (\\S+) \\(shared`).exec(out);
      assert.ok(root, out);
      assert.ok(existsSync(join(root[1]!, "opt", "fennec", "handler-server.js")), out);
      assert.match(out, new RegExp(`  \\.\\.\\.  default/${name}: bundling `));
    }
    for (const name of ["hello-docker", "hello-docker-runsc"]) {
      assert.match(out, new RegExp(`  \\.\\.\\.  default/${name}: handler bundled into `));
      assert.match(out, new RegExp(`  \\.\\.\\.  default/${name}: root filesystem `));
      assert.match(
        out,
        new RegExp(`  \\.\\.\\.  default/${name}: image fennec-fn/default/${name}:\\w+ imported`),
      );
      const ref = new RegExp(`ok     default/${name}: docker image (\\S+)`).exec(out)?.[1];
      assert.ok(ref && (await dockerd.engine.hasImage(ref)), out);
    }
    // Nothing changed: the same digests, nothing imported again.
    const again = await build(dockerd.socketPath, "hello-docker", "hello-runc");
    assert.match(again, /default\/hello-docker: image \S+ is on the engine already/);
    assert.doesNotMatch(again, /imported/);
    // A changed handler: a new image, and the old one removed.
    await appendFile(join(registry, "hello-docker", "handler.ts"), "\n// changed\n");
    const changed = await build(dockerd.socketPath, "hello-docker");
    assert.match(changed, /image \S+ imported/);
    assert.match(changed, /removed the older image fennec-fn\/default\/hello-docker:/);
  });

  it("without a reachable engine builds the root and says the image is imported at first start", async () => {
    const out = await build(join(dir, "no-engine.sock"), "hello-docker");
    assert.match(
      out,
      /ok {5}default\/hello-docker: root filesystem \S+; the image will be imported at first start, since the Docker engine at \S+ cannot be reached/,
    );
  });
});
