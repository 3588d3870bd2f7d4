import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { DEFAULT_ASYNC, type AsyncConfig } from "../../src/config/function-config.js";
import { FennecError } from "../../src/core/errors.js";
import { CallbackPolicy, isPrivateAddress } from "../../src/invocations/callback-policy.js";
import { backoffMs, decide, REQUEUE_DELAY_MS } from "../../src/invocations/retry-policy.js";
import { sandboxKinds } from "../../src/sandbox/drivers/index.js";
import { tempDir } from "../helpers/paths.js";

const CONFIG: AsyncConfig = {
  ...DEFAULT_ASYNC,
  attempts: 3,
  backoffMs: 1000,
  maxBackoffMs: 5000,
  retryStatuses: [503],
};
const NOW = 1_000_000;
const call = (attempt: number, submittedAt = NOW) => ({ key: "default/f", attempt, submittedAt });
const error = (code: FennecError["code"]) => ({ error: new FennecError(code, code) });

describe("the async retry rule", () => {
  it("keeps any status the function answered unless it is declared retryable", () => {
    for (const status of [200, 404, 500, 502])
      assert.deepEqual(decide(CONFIG, call(1), { status }, NOW), { kind: "finish", state: "succeeded" });
    const v = decide(CONFIG, call(1), { status: 503 }, NOW, () => 0.5);
    assert.equal(v.kind, "retry");
    assert.equal(v.kind === "retry" && v.error.code, "FN_RETRYABLE_STATUS");
  });

  it("retries the function's faults with backoff, then dead-letters after the last attempt", () => {
    const first = decide(CONFIG, call(1), error("FN_TRAP"), NOW, () => 0.5);
    assert.deepEqual(first.kind === "retry" && first.notBefore, NOW + 500);
    const last = decide(CONFIG, call(3), error("FN_TIMEOUT"), NOW);
    assert.equal(last.kind, "bury");
    assert.equal(last.kind === "bury" && last.error.code, "FN_TIMEOUT");
  });

  it("puts the platform's capacity faults back without an attempt, bounded by max-age", () => {
    for (const code of ["QUEUE_FULL", "QUEUE_TIMEOUT", "NO_CAPACITY", "SHUTTING_DOWN"] as const) {
      const v = decide(CONFIG, call(3), error(code), NOW);
      assert.deepEqual(v.kind === "requeue" && v.notBefore, NOW + REQUEUE_DELAY_MS, code);
    }
    const old = decide(CONFIG, call(1, NOW - CONFIG.maxAgeMs), error("NO_CAPACITY"), NOW);
    assert.equal(old.kind === "bury" && old.error.code, "CALL_EXPIRED");
  });

  it("fails at once what retrying cannot mend", () => {
    for (const code of ["FUNCTION_NOT_FOUND", "DRIVER_UNAVAILABLE", "INTERNAL"] as const)
      assert.deepEqual(decide(CONFIG, call(1), error(code), NOW), { kind: "finish", state: "failed" }, code);
  });

  it("does not retry past max-age: the last error is kept", () => {
    const v = decide({ ...CONFIG, maxAgeMs: 100 }, call(1), error("FN_TRAP"), NOW, () => 0.99);
    assert.equal(v.kind === "bury" && v.error.code, "FN_TRAP");
  });

  it("draws backoffs with full jitter under an exponential ceiling", () => {
    assert.equal(
      backoffMs(CONFIG, 1, () => 0.999),
      999,
    );
    assert.equal(
      backoffMs(CONFIG, 2, () => 0.999),
      1998,
    );
    assert.equal(
      backoffMs(CONFIG, 10, () => 0.999),
      4995,
      "capped by max-backoff",
    );
    assert.equal(
      backoffMs(CONFIG, 2, () => 0),
      0,
    );
  });
});

describe("function.toml [async]", () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  before(async () => {
    ({ dir, cleanup } = await tempDir());
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "m.wasm"), "x");
  });
  after(() => cleanup());
  const load = (extra: string) =>
    sandboxKinds.loader.load(
      { user: "default", name: "f" },
      dir,
      "f/function.toml",
      `keepalive = 1\nconcurrent-requests = 1\n${extra}\n[wasm]\nmodule = "m.wasm"\n`,
    );

  it("has defaults, and takes durations with units", () => {
    assert.deepEqual(load("").async, DEFAULT_ASYNC);
    const c = load(
      '[async]\nattempts = 5\nbackoff = "250ms"\nmax-backoff = "1m"\nmax-age = "1d"\nretry-statuses = [429, 503]\nconcurrency = 2',
    );
    assert.deepEqual(c.async, {
      attempts: 5,
      backoffMs: 250,
      maxBackoffMs: 60_000,
      maxAgeMs: 86_400_000,
      retryStatuses: [429, 503],
      concurrency: 2,
    });
  });

  it("names the key and what was expected", () => {
    for (const [toml, key] of [
      ['[async]\nbackoff = "soon"', "async.backoff"],
      ["[async]\nattempts = 0", "async.attempts"],
      ["[async]\nretry-statuses = [99]", "async.retry-statuses.0"],
      ['[async]\nbackoff = "10m"\nmax-backoff = "1m"', "async.backoff"],
      ["[async]\nretries = 3", "async.retries"],
    ] as Array<[string, string]>)
      assert.throws(
        () => load(toml),
        (err: FennecError) =>
          err.code === "CONFIG_INVALID" &&
          (err.details as { problems: Array<{ key: string }> }).problems.some((p) => p.key === key),
        toml,
      );
  });
});

describe("where callbacks may go", () => {
  it("takes only http(s) URLs without user information", () => {
    const open = new CallbackPolicy();
    open.check("https://hooks.example.com/done");
    for (const url of ["ftp://example.com/", "javascript:alert(1)", "http://u:p@example.com/", "/relative"])
      assert.throws(() => open.check(url), { code: "CALLBACK_NOT_ALLOWED" }, url);
  });

  it("refuses loopback, private and link-local addresses unless listed", () => {
    const open = new CallbackPolicy();
    for (const url of [
      "http://127.0.0.1:8123/system/functions",
      "http://localhost/",
      "http://169.254.169.254/latest/meta-data",
      "http://10.1.2.3/",
      "http://[::1]/",
      "http://[::ffff:127.0.0.1]/",
      "http://[fd00::1]/",
    ])
      assert.throws(() => open.check(url), { code: "CALLBACK_NOT_ALLOWED" }, url);
    for (const a of ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
      assert.equal(isPrivateAddress(a), false, a);
    for (const a of ["::ffff:10.0.0.1", "64:ff9b::a00:1", "0.0.0.0", "fe80::1"])
      assert.equal(isPrivateAddress(a), true, a);
  });

  it("with an allow-list, takes only its hosts, wherever they point", () => {
    const listed = new CallbackPolicy(["127.0.0.1", ".hooks.example"]);
    listed.check("http://127.0.0.1:9000/x");
    listed.check("https://a.hooks.example/x");
    listed.check("https://hooks.example/x");
    assert.throws(() => listed.check("https://example.com/"), { code: "CALLBACK_NOT_ALLOWED" });
    assert.equal(listed.lookupFor("127.0.0.1"), undefined, "a listed host resolves freely");
    assert.throws(() => new CallbackPolicy(["http://x/"]), { code: "CONFIG_INVALID" });
  });

  it("checks the addresses a name resolves to when the connection is made", async () => {
    const lookup = new CallbackPolicy().lookupFor("localhost")!;
    const err = await new Promise<unknown>((resolve) =>
      (lookup as unknown as (h: string, o: object, cb: (e: unknown) => void) => void)(
        "localhost",
        {},
        resolve,
      ),
    );
    assert.equal((err as FennecError).code, "CALLBACK_NOT_ALLOWED");
  });
});
