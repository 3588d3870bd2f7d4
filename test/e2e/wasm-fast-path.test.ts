import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { readdirSync, readFileSync } from "node:fs";
import { WholeBody } from "../../src/core/body.js";
import type { FennecError } from "../../src/core/errors.js";
import { WasmDriver, type WasmInstance } from "../../src/sandbox/drivers/wasm/driver.js";
import { EXECUTOR_NICE } from "../../src/sandbox/drivers/wasm/thread-priority.js";
import { bytesOf } from "../helpers/body.js";
import { testConfig } from "../helpers/config.js";
import { EXAMPLES, WASM_FIXTURES } from "../helpers/paths.js";

/**
 * The main thread's fast path (inline-runner.ts): short calls run on the gateway's thread on a
 * reset instance; long, sleeping or loud calls move to executors and still answer.
 */

const wasmFn = (module: string, timeoutMs = 30_000) => {
  const name = module.replace(/^.*\//, "").replace(/\.wasm$/, "");
  return testConfig({
    id: { user: "default", name },
    key: `default/${name}`,
    timeoutMs,
    sandbox: { kind: "wasm", module, memoryMiB: 16, env: {}, dirs: {} },
  });
};

const call = (body: string, query = "") => ({
  method: "POST",
  path: "/",
  query,
  headers: {},
  body: Buffer.from(body),
});

async function text(instance: WasmInstance, body = "", query = ""): Promise<string> {
  const res = await instance.invokeStreaming(call(body, query), new AbortController().signal);
  return (await bytesOf(res.body)).toString();
}

describe("wasm fast path: calls on the main thread", () => {
  // A slice long enough that no short call here moves because the machine is busy; the long
  // calls take longer than the two slices a call may hold the thread (fib(38): ≈ 250 ms here).
  const driver = new WasmDriver({ inlineSliceMs: 50 });
  const instances: WasmInstance[] = [];
  const start = async (module: string, timeoutMs?: number) => {
    const instance = await driver.start({
      instanceId: `fast-${instances.length}`,
      config: wasmFn(module, timeoutMs),
      callbackUrl: "",
      waitForCallback: () => Promise.resolve(),
      signal: new AbortController().signal,
    });
    instances.push(instance);
    return instance;
  };
  let echo: WasmInstance;
  before(async () => {
    echo = await start(join(EXAMPLES, "echo", "echo.wasm"));
  });
  after(async () => {
    for (const i of instances) await i.destroy();
    await driver.close();
  });

  it("answers a short call whole, on the main thread", async () => {
    const before = driver.fastPath.inline;
    const res = await echo.invokeStreaming(call("hello fast path"), new AbortController().signal);
    assert.ok(res.body instanceof WholeBody, "a call answered on the main thread is whole");
    assert.equal((await bytesOf(res.body)).toString(), "hello fast path");
    assert.equal(driver.fastPath.inline, before + 1);
  });

  it("starts every call from the module's initial state, also after its memory grew", async () => {
    const fresh = await start(join(WASM_FIXTURES, "fresh.wasm"));
    const before = driver.fastPath.inline;
    for (const query of ["", "", "grow=512", "", "grow=2048", ""]) {
      assert.equal(await text(fresh, "", query), "calls=1 heap=1\n", `after ?${query}`);
    }
    assert.equal(driver.fastPath.inline, before + 6, "every call ran on the main thread");
  });

  it("starts a pre-initialised module's calls from its snapshot, also on the main thread", async () => {
    const module = join(EXAMPLES, "primes", "primes.wasm");
    await driver.prepare(wasmFn(module));
    const primes = await start(module);
    const inline = driver.fastPath.inline;
    for (const query of ["k=10", "k=99999&poison=1", "k=5"]) {
      const res = await primes.invokeStreaming(call("", query), new AbortController().signal);
      assert.deepEqual(
        res.headers.filter(([name]) => name === "x-table" || name === "x-initialised"),
        [
          ["x-table", "snapshot"],
          ["x-initialised", "1"],
        ],
        `?${query}: the table comes from the snapshot, never from a call before`,
      );
      await bytesOf(res.body);
    }
    assert.equal(await text(primes, "", "k=10"), "29\n");
    assert.equal(driver.fastPath.inline, inline + 4);
  });

  it("moves a call that runs past its slice to an executor, which answers it", async () => {
    const fib = await start(join(EXAMPLES, "fib", "fib.wasm"));
    const moved = driver.fastPath.moved.slice;
    // fib(38) takes ≈ 250 ms here, past the two slices a call may hold the main thread.
    assert.equal(await text(fib, "", "n=38"), "fib(38) = 39088169\n");
    assert.equal(driver.fastPath.moved.slice, moved + 1);
    // One move may be noise: a short call still tries the main thread first.
    let inline = driver.fastPath.inline;
    assert.equal(await text(fib, "", "n=5"), "fib(5) = 5\n");
    assert.equal(driver.fastPath.inline, inline + 1);
    // Two in a row are not: the function's next calls go to executors for a while, even short ones.
    assert.equal(await text(fib, "", "n=38"), "fib(38) = 39088169\n");
    assert.equal(await text(fib, "", "n=38"), "fib(38) = 39088169\n");
    assert.equal(driver.fastPath.moved.slice, moved + 3);
    inline = driver.fastPath.inline;
    assert.equal(await text(fib, "", "n=5"), "fib(5) = 5\n");
    assert.equal(driver.fastPath.inline, inline, "the short call after long ones ran on an executor");
    assert.equal(driver.fastPath.moved.slice, moved + 3);
  });

  it("keeps answering other functions on the main thread while a runaway call runs into its timeout", async () => {
    const loop = await start(join(WASM_FIXTURES, "loop.wasm"), 3000);
    let settled = false;
    const runaway = loop
      .invokeStreaming(call(""), new AbortController().signal)
      .finally(() => (settled = true));
    runaway.catch(() => undefined);
    const inline = driver.fastPath.inline;
    for (let i = 0; i < 5; i++) assert.equal(await text(echo, `call ${i}`), `call ${i}`);
    assert.equal(driver.fastPath.inline, inline + 5);
    assert.equal(settled, false, "the echo calls were answered while the runaway still ran");
    // Nothing but the lifecycle's timer stops it (the driver alone has no timeout): cancel it.
    await loop.destroy();
  });

  it("moves a call that sleeps instead of spinning the main thread", async () => {
    const sleep = await start(join(WASM_FIXTURES, "sleep.wasm"));
    const moved = driver.fastPath.moved.sleep;
    assert.equal(await text(sleep, "", "ms=20"), "slept 20 ms\n");
    assert.equal(driver.fastPath.moved.sleep, moved + 1);
  });

  it("runs executors below the gateway's thread's priority, so spinning guests yield it the CPU", async () => {
    // A call that moves has run on an executor: at least one has booted by now.
    const sleep = await start(join(WASM_FIXTURES, "sleep.wasm"));
    assert.equal(await text(sleep, "", "ms=1"), "slept 1 ms\n");
    // /proc/<pid>/task/<tid>/stat: the 19th field is the nice value (after the name in parentheses).
    const niceOf = (tid: string) =>
      Number(
        readFileSync(`/proc/self/task/${tid}/stat`, "utf8")
          .replace(/^.*\) /s, "")
          .split(" ")[16],
      );
    const nices = readdirSync("/proc/self/task").map(niceOf);
    assert.equal(niceOf(String(process.pid)), 0, "the gateway's thread keeps its priority");
    assert.ok(nices.includes(EXECUTOR_NICE), `thread nice values: ${nices.join(", ")}`);
  });

  it("moves a call whose answer is too large to build here, and streams all of it", async () => {
    const flood = await start(join(WASM_FIXTURES, "flood.wasm"));
    const moved = driver.fastPath.moved.output;
    const res = await flood.invokeStreaming(call("", "3"), new AbortController().signal);
    assert.ok(!(res.body instanceof WholeBody));
    assert.equal((await bytesOf(res.body)).byteLength, 3 * 2 ** 20);
    assert.equal(driver.fastPath.moved.output, moved + 1);
  });

  it("ends traps and exits as an executor does, and goes on serving", async () => {
    const trap = await start(join(WASM_FIXTURES, "trap.wasm"));
    const exit3 = await start(join(WASM_FIXTURES, "exit3.wasm"));
    const inline = driver.fastPath.inline;
    await assert.rejects(text(trap), (err: FennecError) => err.code === "FN_TRAP");
    await assert.rejects(
      text(exit3),
      (err: FennecError) =>
        err.code === "FN_EXIT" && /code 3/.test(err.message) && /something went wrong/.test(err.message),
    );
    assert.equal(driver.fastPath.inline, inline + 2, "both ended on the main thread");
    assert.equal(await text(echo, "still here"), "still here");
  });
});
