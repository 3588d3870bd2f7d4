import assert from "node:assert/strict";
import { join } from "node:path";
import { once } from "node:events";
import { PassThrough, type Readable } from "node:stream";
import { finished } from "node:stream/promises";
import { after, before, describe, it } from "node:test";
import { WasmDriver, type WasmInstance } from "../../src/sandbox/drivers/wasm/driver.js";
import { RING_BYTES } from "../../src/sandbox/drivers/wasm/ring.js";
import { testConfig } from "../helpers/config.js";
import { bodyOf } from "../helpers/body.js";
import { startInstance } from "../helpers/instance.js";
import { WASM_FIXTURES } from "../helpers/paths.js";

const MIB = 2 ** 20;

const wasmFn = (file: string, timeoutMs = 30_000) =>
  testConfig({
    id: { user: "default", name: file.replace(/\.wasm$/, "") },
    key: `default/${file.replace(/\.wasm$/, "")}`,
    timeoutMs,
    sandbox: { kind: "wasm", module: join(WASM_FIXTURES, file), memoryMiB: 16, env: {}, dirs: {} },
  });

async function startOn(driver: WasmDriver, file: string, timeoutMs?: number): Promise<WasmInstance> {
  return driver.start({
    instanceId: `stream-${file}`,
    config: wasmFn(file, timeoutMs),
    callbackUrl: "",
    waitForCallback: () => Promise.resolve(),
    signal: new AbortController().signal,
  });
}

const request = (body: Uint8Array | Readable, query = "") => ({
  method: "POST",
  path: "/",
  query,
  headers: {},
  body,
});

/** Reads `body` until its text so far ends with `wanted`. */
async function readUntil(body: Readable, seen: { text: string }, wanted: string): Promise<void> {
  while (!seen.text.endsWith(wanted)) {
    const chunk = body.read() as Buffer | null;
    if (chunk) {
      seen.text += chunk.toString();
      continue;
    }
    if (body.readableEnded || body.destroyed) {
      assert.fail(`the body ended (${String(body.errored)}) before ${JSON.stringify(wanted)}: ${seen.text}`);
    }
    await new Promise((resolve, reject) => {
      body.once("readable", resolve);
      body.once("error", reject);
    });
  }
}

/** Runs `test` on a driver of its own (its own executors), closed after. */
async function withDriver(
  options: ConstructorParameters<typeof WasmDriver>[0],
  test: (driver: WasmDriver) => Promise<void>,
): Promise<void> {
  const driver = new WasmDriver(options);
  try {
    await test(driver);
  } finally {
    await driver.close();
  }
}

/** Reads `body` to its end; resolves with how many bytes it had. */
async function byteCount(body: Readable): Promise<number> {
  let total = 0;
  for await (const chunk of body) total += (chunk as Buffer).byteLength;
  return total;
}

/** Resolves when `body` fails, with the error. */
const failure = (body: Readable) =>
  new Promise<Error & { code?: string }>((resolve) => body.once("error", resolve));

describe("wasm sandbox: streaming bodies", () => {
  let driver: WasmDriver;
  before(() => {
    driver = new WasmDriver({ spareExecutors: 1, maxOutputBytes: 512 * MIB });
  });
  after(() => driver.close());

  it("answers in parts while the module runs, reading the request body as it arrives", async () => {
    const inst = await startOn(driver, "stream-parts.wasm");
    const stdin = new PassThrough();
    const ac = new AbortController();
    const res = await inst.invokeStreaming(request(stdin), ac.signal);
    // Headers and the first part arrive while the module waits for a body nobody has sent yet.
    assert.equal(res.status, 200);
    assert.deepEqual(res.headers, [["content-type", "text/plain"]]);
    const seen = { text: "" };
    await readUntil(res.body, seen, "part 1\n");
    stdin.write("one\n");
    await readUntil(res.body, seen, "got: one\n");
    stdin.write("two\n");
    await readUntil(res.body, seen, "got: two\n");
    stdin.end();
    await readUntil(res.body, seen, "end\n");
    // A paused stream emits "end" only when read once more after its last byte, and reading
    // that byte can emit it before a listener added now: drain, then wait for the end either way.
    res.body.resume();
    await finished(res.body);
    assert.equal(seen.text, "part 1\ngot: one\ngot: two\nend\n");
  });

  it("holds a module that writes 256 MiB back to what its reader takes", async () => {
    const inst = await startOn(driver, "flood.wasm");
    const res = await inst.invokeStreaming(request(new Uint8Array(0), "256"), new AbortController().signal);
    assert.equal(res.status, 200);
    // The reader takes one look and then stops, as a client whose socket is full: the stream
    // buffer fills, then the ring, then the module blocks in fd_write. (Until someone reads,
    // nothing is drained at all.) The test then gives the module time to run far past any bound
    // if back-pressure did not hold it.
    await once(res.body, "readable");
    await new Promise((r) => setTimeout(r, 500));
    const bound = 3 * RING_BYTES;
    assert.ok(driver.heldOutputBytes <= bound, `${driver.heldOutputBytes} bytes held while nobody read`);
    // Reading all of it, the host never holds more than a few rings at once.
    let total = 0;
    let most = 0;
    for await (const chunk of res.body) {
      total += (chunk as Buffer).byteLength;
      most = Math.max(most, driver.heldOutputBytes);
    }
    assert.equal(total, 256 * MIB);
    assert.ok(most <= bound, `${most} bytes held at most`);
    assert.equal(driver.heldOutputBytes, 0);
  });

  it("cuts the body with FN_RESPONSE_TOO_LARGE when the output passes the limit mid-stream", async () => {
    await withDriver({ spareExecutors: 0, maxOutputBytes: 1 * MIB }, async (small) => {
      const inst = await startOn(small, "flood.wasm");
      const res = await inst.invokeStreaming(request(new Uint8Array(0), "4"), new AbortController().signal);
      assert.equal(res.status, 200);
      let total = 0;
      res.body.on("data", (chunk: Buffer) => (total += chunk.byteLength));
      const err = await failure(res.body);
      assert.equal(err.code, "FN_RESPONSE_TOO_LARGE");
      assert.ok(total <= 1 * MIB, `${total} bytes passed a 1 MiB limit`);
      // The same instance serves again.
      const again = await inst.invokeStreaming(request(new Uint8Array(0), "0"), new AbortController().signal);
      assert.equal(again.status, 200);
    });
  });

  it("stops a module blocked on a reader that stalls at the function's timeout (the lifecycle's)", async () => {
    // One executor: the next call is served only if the blocked module no longer holds it.
    await withDriver({ spareExecutors: 1, maxExecutors: 1 }, async (one) => {
      const inst = await startInstance(one, wasmFn("flood.wasm", 500));
      const res = await inst.invoke({ ...request(new Uint8Array(0), "64"), body: bodyOf() });
      const err = await failure(res.body);
      assert.equal(err.code, "FN_TIMEOUT");
      await inst.stopped;
      assert.equal(inst.state, "failed");
      const next = await startOn(one, "flood.wasm");
      const again = await next.invokeStreaming(request(new Uint8Array(0), "1"), new AbortController().signal);
      assert.equal(await byteCount(again.body), MIB);
    });
  });

  it("stops the module when the reader goes away, and serves the next call", async () => {
    // One executor: the next call is served only if the abandoned module no longer holds it.
    await withDriver({ spareExecutors: 1, maxExecutors: 1 }, async (one) => {
      const inst = await startOn(one, "stream-parts.wasm");
      const stdin = new PassThrough();
      const res = await inst.invokeStreaming(request(stdin), new AbortController().signal);
      await readUntil(res.body, { text: "" }, "part 1\n");
      const closed = new Promise((resolve) => res.body.once("close", resolve));
      res.body.destroy();
      await closed;
      const next = await inst.invokeStreaming(request(Buffer.from("again\n")), new AbortController().signal);
      const seen = { text: "" };
      await readUntil(next.body, seen, "end\n");
      assert.equal(seen.text, "part 1\ngot: again\nend\n");
    });
  });

  it("serves another function while streaming calls blocked on their clients hold every executor", async () => {
    await withDriver({ spareExecutors: 0, maxExecutors: 2 }, async (two) => {
      const stuck = await startOn(two, "stream-parts.wasm");
      // Two calls that answered part 1 and wait for request bodies that never come: they cannot
      // be run again from the start, and they take both executors.
      const bodies = [new PassThrough(), new PassThrough()];
      const calls = await Promise.all(
        bodies.map((b) => stuck.invokeStreaming(request(b), new AbortController().signal)),
      );
      for (const c of calls) await readUntil(c.body, { text: "" }, "part 1\n");
      const other = await startOn(two, "flood.wasm");
      const res = await other.invokeStreaming(request(new Uint8Array(0), "1"), new AbortController().signal);
      assert.equal(await byteCount(res.body), MIB);
      // The blocked calls still run, and finish once their bodies come.
      for (const [i, b] of bodies.entries()) {
        b.end("late\n");
        const seen = { text: "" };
        await readUntil(calls[i]!.body, seen, "end\n");
        assert.equal(seen.text, "got: late\nend\n");
      }
    });
  });
});
