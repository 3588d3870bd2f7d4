import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { chmod, copyFile, mkdir } from "node:fs/promises";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { FunctionConfig, SandboxConfig } from "../../src/config/function-config.js";
import type { SandboxDriver } from "../../src/sandbox/contract.js";
import { ContainerDriver } from "../../src/sandbox/drivers/container/driver.js";
import { OciDriver } from "../../src/sandbox/drivers/oci/driver.js";
import { ProcessDriver } from "../../src/sandbox/drivers/process/driver.js";
import { VmDriver } from "../../src/sandbox/drivers/vm/driver.js";
import type { Instance } from "../../src/sandbox/instance.js";
import { ReadinessHub } from "../../src/sandbox/readiness.js";
import { bytesOf } from "../helpers/body.js";
import { post, TestCalls } from "../helpers/call-host.js";
import { testConfig } from "../helpers/config.js";
import { startDockerd, type TestDockerd } from "../helpers/docker.js";
import { loopbackTarget, startInstance } from "../helpers/instance.js";
import { EXAMPLES, ROOT, tempDir } from "../helpers/paths.js";

// The handler binding (env.fennec) end to end, per sandbox: the handler inside chains, awaits and
// uses state over the socket Fennec serves in the directory the sandbox shares, with no IP network.
// Needs root, bubblewrap, runc, runsc, docker.io, qemu-system-x86 and the guest of
// guest/linux/build.sh (.ci/run installs and builds them); a missing tool fails, never skips.

const FIXTURE = join(ROOT, "test", "fixtures", "binding", "handler.ts");

interface Sandbox {
  readonly label: string;
  /** Whether it has no IP network (the host's loopback must be out of reach). */
  readonly isolated: boolean;
  driver(): Promise<SandboxDriver>;
  table(handler: string): SandboxConfig;
  done?(): Promise<void>;
}

const processTable =
  (isolate: boolean) =>
  (handler: string): SandboxConfig => ({
    kind: "process",
    handler,
    command: undefined,
    env: {},
    transport: "unix",
    memoryMiB: 256,
    isolate,
    pids: 512,
  });

let dockerd: TestDockerd | undefined;
const SANDBOXES: Sandbox[] = [
  { label: "process", isolated: false, driver: async () => new ProcessDriver(), table: processTable(false) },
  {
    label: "process (bubblewrap)",
    isolated: true,
    driver: async () => new ProcessDriver(),
    table: processTable(true),
  },
  ...(["runc", "runsc"] as const).map((runtime): Sandbox => ({
    label: `oci (${runtime})`,
    isolated: true,
    driver: async () => new OciDriver(),
    table: (handler) => ({
      kind: "oci",
      handler,
      command: undefined,
      runtime,
      env: {},
      memoryMiB: 256,
      pids: 1024,
      rootfs: "shared",
    }),
  })),
  ...([undefined, "runsc"] as const).map((runtime): Sandbox => ({
    label: `container (docker${runtime ? `, ${runtime}` : ""})`,
    isolated: true,
    driver: async () => {
      dockerd = await startDockerd();
      return new ContainerDriver({ socketPath: dockerd.socketPath });
    },
    table: (handler) => ({
      kind: "container",
      image: undefined,
      handler,
      runtime,
      env: {},
      memoryMiB: 256,
      pids: 1024,
      network: "none",
    }),
    done: async () => dockerd?.stop(),
  })),
  {
    // Fennec's Linux guest on its channel (TCG here: each guest boots in seconds).
    label: "vm (QEMU microvm, guest channel)",
    isolated: true,
    driver: async () => new VmDriver({ accel: "auto" }),
    table: (handler) => ({
      kind: "vm",
      kernel: undefined,
      image: undefined,
      memoryMiB: 256,
      cpus: 1,
      cmdline: "",
      hypervisor: { type: "microvm", "disk-type": "9p" },
      handler,
      command: undefined,
      env: {},
      transport: "channel",
      snapshot: false,
    }),
  },
];

const json = async <T>(res: { body: Parameters<typeof bytesOf>[0] }) =>
  JSON.parse((await bytesOf(res.body)).toString()) as T;

for (const sandbox of SANDBOXES) {
  describe(`handler binding: ${sandbox.label}`, () => {
    let driver: SandboxDriver;
    let cleanupDir: () => Promise<void>;
    let fnDir: string;
    let parent: Instance;
    let child: Instance;
    const calls = new TestCalls();
    // A plain process calls back over HTTP when ready, as it would call the gateway.
    const hub = new ReadinessHub();
    const callbacks = createServer((req, res) => {
      hub.signal(decodeURIComponent((req.url ?? "").replace(/^\/ready\//, "")));
      res.writeHead(200, { connection: "close" }).end("ok");
    });
    let callbackBase = "";
    const start = (config: FunctionConfig) => startInstance(driver, config, { hub, callbackBase });
    const config = (name: string, dir = fnDir, file = "handler.ts"): FunctionConfig =>
      testConfig({
        id: { user: "default", name },
        key: `default/${name}`,
        dir,
        file: join(dir, "function.toml"),
        timeoutMs: 60_000,
        sandbox: sandbox.table(join(dir, file)),
      });

    before(async () => {
      await new Promise<void>((r) => callbacks.listen(0, "127.0.0.1", () => r()));
      callbackBase = `http://127.0.0.1:${(callbacks.address() as AddressInfo).port}/ready/`;
      const tmp = await tempDir("fennec-binding-");
      cleanupDir = tmp.cleanup;
      // The sandbox user (65534) reads the function directory of an isolated sandbox.
      await chmod(tmp.dir, 0o755);
      fnDir = join(tmp.dir, "fn");
      await mkdir(fnDir, { mode: 0o755 });
      await copyFile(FIXTURE, join(fnDir, "handler.ts"));
      driver = await sandbox.driver();
      parent = await start(config("parent"));
      child = await start(config("child"));
      calls.functions.set("child", child);
    });
    after(async () => {
      await parent?.destroy();
      await child?.destroy();
      await driver?.close?.();
      await sandbox.done?.();
      await cleanupDir?.();
      await new Promise((r) => callbacks.close(r));
    });

    it("chains, awaits and uses state through the binding", async () => {
      calls.childPath = "/echo";
      const host = calls.host();
      const called = await json<{ child: string; status: number; output: string; calls: number }>(
        await parent.invoke(post("/call", "ping", host, "to=child")),
      );
      assert.equal(called.status, 200);
      assert.equal(called.output, "ping", "the child answered with its input");
      assert.match(called.child, /^[0-9a-f-]{36}$/);
      assert.equal(called.calls, 1);

      const state = await json<Record<string, unknown>>(
        await parent.invoke(post("/state", "", calls.host())),
      );
      assert.deepEqual(state, {
        written: "hELlo",
        list: ["a", "b"],
        cleared: 0,
        deleted: true,
        missing: null,
        again: false,
        refused: "FUNCTION_NOT_FOUND",
      });
    });

    it("names the call to the handler, never a client's forged id", async () => {
      const host = calls.host();
      const forged = {
        ...post("/whoami", "", host),
        headers: { "content-length": "0", "x-fennec-call-id": "forged" },
      };
      assert.deepEqual(await json(await parent.invoke(forged)), {
        binding: host.callId,
        header: host.callId,
      });
      // A call Fennec names no host for: the client's header does not reach the handler at all.
      const bare = { ...post("/whoami"), headers: { "content-length": "0", "x-fennec-call-id": "forged" } };
      assert.deepEqual(await json(await parent.invoke(bare)), { binding: null, header: null });
    });

    it("refuses a request naming a call not in flight on this instance", async () => {
      // No id, a made-up one, and this instance's own finished call.
      const none = await json<{ status: number; error: string }>(
        await parent.invoke(post("/forge", "", calls.host(), "id=")),
      );
      assert.deepEqual(none, { status: 404, error: "CALL_NOT_FOUND" });
      const madeUp = await json(await parent.invoke(post("/forge", "", calls.host(), `id=${randomUUID()}`)));
      assert.deepEqual(madeUp, { status: 404, error: "CALL_NOT_FOUND" });
      const earlier = calls.host();
      await bytesOf((await parent.invoke(post("/whoami", "", earlier))).body);
      const ended = await json(await parent.invoke(post("/forge", "", calls.host(), `id=${earlier.callId}`)));
      assert.deepEqual(ended, { status: 404, error: "CALL_NOT_FOUND" });

      // A call in flight on another instance (held until the test releases it) is no better.
      const held = calls.host();
      const key = `go-${held.callId}`;
      const holding = child.invoke(post("/wait", "", held, `key=${key}`));
      const other = await json(await parent.invoke(post("/forge", "", calls.host(), `id=${held.callId}`)));
      assert.deepEqual(other, { status: 404, error: "CALL_NOT_FOUND" });
      assert.equal(calls.state.has("forged"), false, "nothing was written in a forged name");
      calls.state.set(key, new Uint8Array([1]));
      assert.equal((await bytesOf((await holding).body)).toString(), "released");
    });

    if (sandbox.isolated)
      it("reaches Fennec with no IP network", async () => {
        const target = await loopbackTarget();
        try {
          const net = (
            await bytesOf((await parent.invoke(post("/net", "", calls.host(), `port=${target.port}`))).body)
          ).toString();
          assert.notEqual(net, "connected", "the host's loopback is out of reach");
          calls.childPath = "/echo";
          const called = await json<{ output: string }>(
            await parent.invoke(post("/call", "still", calls.host(), "to=child")),
          );
          assert.equal(called.output, "still");
        } finally {
          await target.close();
        }
      });

    it("runs the chain-process example: 202 with the child's id, or the child's answer when awaited", async () => {
      const example = join(fnDir, "..", "example");
      await mkdir(example, { mode: 0o755 });
      await copyFile(join(EXAMPLES, "chain-process", "handler.ts"), join(example, "handler.ts"));
      const inst = await start(config("chain-process", example));
      try {
        calls.childPath = "/echo";
        const queued = await inst.invoke(post("/", "abc", calls.host(), "to=child"));
        assert.equal(queued.status, 202);
        const { callId } = await json<{ callId: string }>(queued);
        assert.equal(queued.headers.find(([k]) => k === "x-child-call-id")?.[1], callId);
        const awaited = await inst.invoke(post("/", "xyz", calls.host(), "to=child&await=1"));
        assert.equal(awaited.status, 200);
        assert.equal((await bytesOf(awaited.body)).toString(), "xyz");
        const noted = (calls.appended.get("chain-process:children") ?? []).map((b) =>
          Buffer.from(b).toString(),
        );
        assert.ok(noted.includes(`${callId}\n`), JSON.stringify(noted));
      } finally {
        await inst.destroy();
      }
    });
  });
}
