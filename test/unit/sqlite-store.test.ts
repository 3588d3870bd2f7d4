import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import Database from "better-sqlite3";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { SqliteStore } from "../../src/store/sqlite-store.js";
import type { CallRecord } from "../../src/store/contract.js";

const body = (s: string) => new TextEncoder().encode(s);

describe("SqliteStore: the embedded store's own behaviour", () => {
  const dirs: string[] = [];
  after(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it("runs an async call from enqueue to finish, records a sync call, and keeps both across a reopen", async () => {
    const dir = await mkdtemp(join(tmpdir(), "fennec-store-"));
    dirs.push(dir);
    const path = join(dir, "fennec.db");
    let store = new SqliteStore(path);
    const id = randomUUID();
    const request = { method: "POST", path: "/", query: "", headers: { a: "b" }, body: body("in") };
    assert.deepEqual(await store.enqueue({ id, function: "u/f", request, submittedAt: 1 }), {
      id,
      created: true,
    });
    const done = store.whenFinished(id);
    const [leased] = await store.take({ node: "n", max: 5, leaseMs: 1000, now: 2 });
    assert.equal(leased?.record.attempt, 1);
    assert.deepEqual(leased?.request, { ...request, body: leased.request.body });
    assert.equal(new TextDecoder().decode(leased.request.body), "in");
    await store.finish(id, "n", {
      state: "succeeded",
      response: { status: 201, headers: [["x", "y"]], body: body("out") },
      figures: { execMs: 3 },
    });
    assert.equal((await done).state, "succeeded");
    const sync: CallRecord = { ...(await store.get(id))!, id: randomUUID(), kind: "sync" };
    store.record(sync);
    await store.close();

    store = new SqliteStore(path);
    const again = await store.get(id);
    assert.equal(again?.status, 201);
    assert.equal(again?.execMs, 3);
    assert.equal(new TextDecoder().decode((await store.response(id))!.body), "out");
    assert.equal((await store.get(sync.id))?.kind, "sync");
    await store.close();
  });

  it("upgrades a schema 1 file (before callback state), keeping its calls, whose callback then goes pending", async () => {
    const dir = await mkdtemp(join(tmpdir(), "fennec-store-"));
    dirs.push(dir);
    const path = join(dir, "fennec.db");
    let store = new SqliteStore(path);
    const id = randomUUID();
    const request = { method: "POST", path: "/", query: "", headers: {}, body: body("in") };
    await store.enqueue({ id, function: "u/f", request, submittedAt: 1, callbackUrl: "http://cb/x" });
    await store.take({ node: "n", max: 5, leaseMs: 60_000, now: 2 });
    await store.close();
    // What an older Fennec left: schema 1 had no callback_state (nor schema 3's via and placement).
    const old = new Database(path);
    old.exec(
      "DROP INDEX calls_callbacks; ALTER TABLE calls DROP COLUMN callback_state; ALTER TABLE calls DROP COLUMN via; ALTER TABLE calls DROP COLUMN placement",
    );
    old.pragma("user_version = 1");
    old.close();

    store = new SqliteStore(path);
    assert.equal((await store.get(id))?.state, "running");
    await store.finish(id, "n", { state: "failed", response: undefined, figures: {} });
    assert.deepEqual(
      (await store.pendingCallbacks(10)).map((r) => [r.id, r.callbackState]),
      [[id, "pending"]],
    );
    await store.close();
    const check = new Database(path, { readonly: true });
    assert.equal(check.pragma("user_version", { simple: true }), 3);
    check.close();
  });

  it("fails only the operation at fault in a group committed together", async () => {
    const store = new SqliteStore(":memory:");
    const call = (headers: Record<string, string>) => ({
      id: randomUUID(),
      function: "u/f",
      request: { method: "POST", path: "/", query: "", headers, body: body("") },
      submittedAt: 1,
    });
    const [good, bad, alsoGood] = [call({}), call({ big: 1n as unknown as string }), call({})];
    const results = await Promise.allSettled([good, bad, alsoGood].map((c) => store.enqueue(c)));
    assert.deepEqual(
      results.map((r) => r.status),
      ["fulfilled", "rejected", "fulfilled"],
    );
    assert.equal((await store.get(good.id))?.state, "queued");
    assert.equal(await store.get(bad.id), undefined);
    assert.equal((await store.get(alsoGood.id))?.state, "queued");
    await store.close();
  });

  it("gives the space of what retention removed back to the file system", async () => {
    const dir = await mkdtemp(join(tmpdir(), "fennec-store-"));
    dirs.push(dir);
    const store = new SqliteStore(join(dir, "fennec.db"));
    for (let i = 0; i < 40; i++) {
      const id = randomUUID();
      await store.enqueue({
        id,
        function: "u/f",
        request: { method: "POST", path: "/", query: "", headers: {}, body: new Uint8Array(64 * 1024) },
        submittedAt: i,
      });
      await store.take({ node: "n", max: 1, leaseMs: 1000, now: 100 });
      await store.finish(id, "n", { state: "succeeded", response: undefined, figures: { finishedAt: 100 } });
    }
    const full = await store.sizeBytes();
    assert.ok(full > 40 * 64 * 1024, String(full));
    assert.deepEqual(await store.prune({ maxAgeMs: 1000, maxBytes: 2 ** 40 }, 10_000), {
      calls: 40,
      logLines: 0,
    });
    const after = await store.sizeBytes();
    assert.ok(after < full / 4, `${after} bytes after pruning ${full}`);
    await store.close();
  });
});
