import assert from "node:assert/strict";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import type { CallHost } from "../../src/core/call-host.js";
import { FennecError } from "../../src/core/errors.js";
import { callHostFactory, chainDepthOf } from "../../src/invocations/call-host.js";
import type { CallHostFactory } from "../../src/invocations/invocations.js";
import { WasmDriver, type WasmInstance } from "../../src/sandbox/drivers/wasm/driver.js";
import {
  checkInterface,
  isFaasmModule,
  type ModuleInterface,
} from "../../src/sandbox/drivers/wasm/module-interface.js";
import { SqliteStore } from "../../src/store/sqlite-store.js";
import { bytesOf } from "../helpers/body.js";
import { testConfig } from "../helpers/config.js";
import { tempDir, WASM_FIXTURES } from "../helpers/paths.js";

/**
 * Faasm's host interface on the wasm driver, with the real store behind the call host and a
 * small runner standing in for the async engine (it takes chained calls off the store and runs
 * them on the same instance): input and output, state from wasm, chain and await, the depth
 * limit, another user's function, what Fennec does not support.
 */

const MODULE = join(WASM_FIXTURES, "faasm-ops.wasm");

const config = (name: string) =>
  testConfig({
    id: { user: "default", name },
    key: `default/${name}`,
    timeoutMs: 60_000,
    concurrentRequests: 64,
    sandbox: { kind: "wasm", module: MODULE, memoryMiB: 16, env: {}, dirs: {} },
  });

describe("Faasm host interface (env.__faasm_*) on the wasm driver", () => {
  const driver = new WasmDriver({ spareExecutors: 1 });
  let store: SqliteStore;
  let cleanup: () => Promise<void>;
  let instance: WasmInstance;
  let hosts: CallHostFactory;
  let running = true;
  let runner: Promise<void>;

  const invoke = async (body: string | Uint8Array, call?: CallHost) => {
    const res = await instance.invoke(
      { method: "POST", path: "/", query: "", headers: {}, body: toBody(body), call },
      { signal: new AbortController().signal },
    );
    return { status: res.status, body: await bytesOf(res.body) };
  };
  const toBody = (b: string | Uint8Array) => Readable.from([Buffer.from(b)]);

  /** Runs chained calls as the async engine would: take, invoke with the child's host, finish. */
  const runQueued = async () => {
    while (running) {
      const taken = await store.take({ node: "test", max: 16, leaseMs: 60_000, now: Date.now() });
      for (const { record, request } of taken) {
        const host = hosts(record.id, "default", chainDepthOf(request.headers));
        void invoke(request.body, host).then(
          (r) =>
            store.finish(record.id, "test", {
              state: "succeeded",
              response: { status: r.status, headers: [], body: r.body },
              figures: { status: r.status },
            }),
          (err: FennecError) =>
            store.finish(record.id, "test", {
              state: "failed",
              response: undefined,
              figures: { status: 500, errorCode: err.code, errorMessage: err.message },
            }),
        );
      }
      if (taken.length === 0) await new Promise((r) => setTimeout(r, 10));
    }
  };

  before(async () => {
    const dir = await tempDir();
    cleanup = dir.cleanup;
    store = new SqliteStore(join(dir.dir, "fennec.db"));
    hosts = callHostFactory(store, {
      configOf: ({ name }) => {
        if (name !== "ops") throw new FennecError("FUNCTION_NOT_FOUND", `no function ${name}`);
        return config(name);
      },
      lend: () => () => {},
      canPlace: () => true,
    });
    instance = await driver.start({
      instanceId: "faasm-1",
      config: config("ops"),
      callbackUrl: "",
      waitForCallback: () => Promise.resolve(),
      signal: new AbortController().signal,
    });
    runner = runQueued();
  });

  after(async () => {
    running = false;
    await runner;
    await instance.destroy();
    await driver.close();
    await store.close();
    await cleanup();
  });

  it("reads the request body as its input and answers with its output (200), never on the main thread", async () => {
    const r = await invoke("echo:hello faasm", hosts("c-echo", "default", 0));
    assert.equal(r.status, 200);
    assert.equal(r.body.toString(), "in:hello faasm");
    assert.equal(driver.fastPath.inline, 0, "a Faasm function never runs inline");
  });

  it("state from wasm: whole and offset writes and reads, appended state, a mapped pointer pushed back", async () => {
    const r = await invoke("state:counter", hosts("c-state", "default", 0));
    assert.equal(r.body.toString(), "hello world|11|world|abb|Hello world|11");
    assert.equal(Buffer.from((await store.stateGet("default", "counter"))!).toString(), "Hello world");
    assert.deepEqual(
      (await store.stateAppended("default", "counter")).map((b) => Buffer.from(b).toString()),
      ["a", "bb"],
    );
  });

  it("hands on an output larger than the shared ring whole and in order", async () => {
    const n = 1_000_000;
    const r = await invoke(`big:${n}`, hosts("c-big", "default", 0));
    assert.equal(r.body.byteLength, n);
    for (const i of [0, 25, 26, 65_535, 65_536, n - 1])
      assert.equal(r.body[i], "a".charCodeAt(0) + (i % 26), `byte ${i}`);
  });

  it("chains a call, awaits it and gets its output; the child's record names its parent", async () => {
    const r = await invoke("chain:ops:echo:from the parent", hosts("c-parent", "default", 0));
    assert.equal(r.body.toString(), "child said: in:from the parent rc=0");
    const children = await store.list({ parentId: "c-parent" });
    assert.equal(children.length, 1);
    assert.equal(children[0]!.function, "default/ops");
  });

  it("a chain cycle ends at the depth limit with CHAIN_TOO_DEEP, no runaway", async () => {
    await assert.rejects(invoke("cycle:ops", hosts("c-cycle", "default", 0)), (err: FennecError) => {
      assert.equal(err.code, "FN_EXIT", "the top call sees its child fail");
      return true;
    });
    // Every level chained once: depths 1..16 ran, the one at 16 was refused the 17th.
    const all = await store.list({ limit: 1000 });
    const chain: string[] = [];
    for (let id: string | undefined = "c-cycle"; id;) {
      const child = all.find((c) => c.parentId === id);
      if (child) chain.push(child.id);
      id = child?.id;
    }
    assert.equal(chain.length, 16);
    const deepest = all.find((c) => c.id === chain.at(-1))!;
    assert.equal(deepest.errorCode, "CHAIN_TOO_DEEP");
  });

  it("refuses a function of another user (CHAIN_OTHER_USER) and one that does not exist", async () => {
    await assert.rejects(invoke("chain:alice/ops:x", hosts("c-other", "default", 0)), (err: FennecError) => {
      assert.equal(err.code, "CHAIN_OTHER_USER");
      return true;
    });
    await assert.rejects(invoke("chain:nope:x", hosts("c-missing", "default", 0)), (err: FennecError) => {
      assert.equal(err.code, "FUNCTION_NOT_FOUND");
      return true;
    });
    assert.equal((await store.list({ parentId: "c-other" })).length, 0);
  });

  it("traps with the reason on a host call Fennec does not support", async () => {
    await assert.rejects(invoke("unsupported", hosts("c-unsup", "default", 0)), (err: FennecError) => {
      assert.equal(err.code, "FN_TRAP");
      assert.match(err.message, /__faasm_chain_ptr, which Fennec does not support/);
      return true;
    });
  });

  it("a non-zero return is the call's error (FN_EXIT); without a call host, state fails clearly", async () => {
    await assert.rejects(invoke("fail", hosts("c-fail", "default", 0)), (err: FennecError) => {
      assert.equal(err.code, "FN_EXIT");
      return true;
    });
    await assert.rejects(invoke("state:x"), (err: FennecError) => {
      assert.equal(err.code, "STORE_UNAVAILABLE");
      return true;
    });
  });

  it("the module check accepts Faasm's host calls (marking the module) and refuses other env imports", () => {
    const shape = (name: string): ModuleInterface => ({
      imports: [
        { module: "wasi_snapshot_preview1", name: "fd_write", kind: "function" },
        { module: "env", name, kind: "function" },
      ],
      exports: [
        { name: "_start", kind: "function" },
        { name: "memory", kind: "memory" },
      ],
    });
    for (const name of ["__faasm_read_input", "__faasm_chain_ptr"]) {
      checkInterface(shape(name), "fn");
      assert.equal(isFaasmModule(shape(name)), true);
    }
    assert.throws(
      () => checkInterface(shape("__faasm_not_a_call"), "fn"),
      (err: FennecError) => err.code === "FN_BAD_MODULE" && /env\.__faasm_not_a_call/.test(err.message),
    );
    assert.equal(isFaasmModule({ imports: [], exports: [] }), false);
  });
});
