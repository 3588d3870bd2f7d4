import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import Database from "better-sqlite3";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { SqliteStore } from "../../src/store/sqlite-store.js";
import type { CallRecord } from "../../src/store/contract.js";
import { MIGRATIONS, SCHEMA_VERSION } from "../../src/store/sqlite/schema.js";
import { timeOrderedUuid } from "../../src/core/call-id.js";
import { FennecError } from "../../src/core/errors.js";

const body = (s: string) => new TextEncoder().encode(s);
const rejectsCode = (p: Promise<unknown>, code: string) =>
  assert.rejects(p, (err: unknown) => err instanceof FennecError && err.code === code);

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
    // What an older Fennec left: schema 1 had no callback_state (nor schema 4's via and placement,
    // nor schema 5's callback_node, nor schema 6's record pages).
    const old = new Database(path);
    old.exec(
      "DROP TABLE record_pages; DROP TABLE record_page_functions; DROP INDEX calls_callbacks; ALTER TABLE calls DROP COLUMN callback_state; ALTER TABLE calls DROP COLUMN via; ALTER TABLE calls DROP COLUMN placement; ALTER TABLE calls DROP COLUMN callback_node",
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
    assert.equal(check.pragma("user_version", { simple: true }), SCHEMA_VERSION);
    check.close();
  });

  /** A schema 2 file as the Fennec before schema 3 left it: its calls in a rowid table, four kinds of call. */
  function schema2File(path: string): {
    ids: { sync: string; queued: string; running: string; dead: string };
  } {
    const db = new Database(path);
    db.pragma("auto_vacuum = INCREMENTAL");
    db.exec(MIGRATIONS[0]!);
    db.exec(MIGRATIONS[1]!);
    db.pragma("user_version = 2");
    const ids = {
      sync: timeOrderedUuid(10),
      queued: timeOrderedUuid(20),
      // Schema 2's async ids were random (v4): they survive, in id order.
      running: randomUUID(),
      dead: timeOrderedUuid(40),
    };
    const insert = db.prepare(
      `INSERT INTO calls (id, function, kind, state, node, attempt, submitted_at, finished_at, status,
        idempotency_key, callback_url, lease_until, bytes, callback_state)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    insert.run(ids.sync, "u/f", "sync", "succeeded", "n", 1, 10, 11, 200, null, null, null, 50, null);
    insert.run(ids.queued, "u/f", "async", "queued", null, 0, 20, null, null, "key-1", null, null, 60, null);
    insert.run(ids.running, "u/g", "async", "running", "n", 1, 30, null, null, null, null, 90_000, 70, null);
    insert.run(
      ids.dead,
      "u/g",
      "async",
      "dead",
      "n",
      3,
      40,
      41,
      500,
      null,
      "http://cb/x",
      null,
      80,
      "pending",
    );
    const request = db.prepare(
      "INSERT INTO requests (call_id, method, path, query, headers, body) VALUES (?, 'POST', '/', '', '{}', ?)",
    );
    for (const id of [ids.queued, ids.running, ids.dead]) request.run(id, Buffer.from(`in-${id}`));
    db.close();
    return { ids };
  }

  const allCalls = (path: string) => {
    const db = new Database(path, { readonly: true });
    try {
      return db.prepare("SELECT * FROM calls ORDER BY id").all();
    } finally {
      db.close();
    }
  };

  it("upgrades a schema 2 file to a WITHOUT ROWID calls table keyed by id, keeping every call, and the queue still works", async () => {
    const dir = await mkdtemp(join(tmpdir(), "fennec-store-"));
    dirs.push(dir);
    const path = join(dir, "fennec.db");
    const { ids } = schema2File(path);
    const before = allCalls(path);

    const store = new SqliteStore(path);
    try {
      const check = new Database(path, { readonly: true });
      assert.equal(check.pragma("user_version", { simple: true }), SCHEMA_VERSION);
      assert.match(
        check.prepare<[], string>("SELECT sql FROM sqlite_schema WHERE name = 'calls'").pluck().get()!,
        /WITHOUT ROWID\s*$/,
      );
      const indexes = check
        .prepare<[], string>(
          "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'calls' ORDER BY name",
        )
        .pluck()
        .all();
      assert.deepEqual(indexes, [
        "calls_active",
        "calls_callbacks",
        "calls_function",
        "calls_idempotency",
        "calls_leases",
        "calls_parent",
        "calls_queued",
      ]);
      check.close();
      // Every row, every column, as it was.
      // Every call as it was, with schema 4's two new columns empty.
      assert.deepEqual(
        allCalls(path),
        (before as Array<Record<string, unknown>>).map((row) => ({
          ...row,
          via: null,
          placement: null,
          callback_node: null,
        })),
      );

      assert.equal((await store.get(ids.sync))?.status, 200);
      assert.deepEqual(
        (await store.list({})).map((r) => r.id),
        [ids.sync, ids.queued, ids.running, ids.dead].sort().reverse(),
      );
      assert.deepEqual(
        (await store.list({ function: "u/g" })).map((r) => r.id),
        [ids.running, ids.dead].sort().reverse(),
      );
      assert.deepEqual(
        (await store.list({ since: 30 })).map((r) => r.id),
        [ids.running, ids.dead].sort().reverse(),
      );
      assert.deepEqual(
        (await store.pendingCallbacks(10)).map((r) => r.id),
        [ids.dead],
      );
      // The idempotency index came along: a resubmission gets the first call.
      const again = await store.enqueue({
        id: timeOrderedUuid(50),
        function: "u/f",
        request: { method: "POST", path: "/", query: "", headers: {}, body: body("x") },
        submittedAt: 50,
        idempotencyKey: "key-1",
      });
      assert.deepEqual(again, { id: ids.queued, created: false });
      // So did the queue's and the leases' indexes: the running call's lease ran out, both are due.
      const taken = await store.take({ node: "n2", max: 5, leaseMs: 1000, now: 100_000 });
      assert.deepEqual(taken.map((t) => t.record.id).sort(), [ids.queued, ids.running].sort());
      assert.equal(
        new TextDecoder().decode(taken.find((t) => t.record.id === ids.queued)!.request.body),
        `in-${ids.queued}`,
      );
    } finally {
      await store.close();
    }
  });

  it("leaves a schema 2 file as it was when its upgrade fails part way (one transaction)", async () => {
    const dir = await mkdtemp(join(tmpdir(), "fennec-store-"));
    dirs.push(dir);
    const path = join(dir, "fennec.db");
    schema2File(path);
    // A row schema 3 cannot hold (a rowid table let a TEXT PRIMARY KEY be NULL): the copy fails
    // after the new table was made and other rows were copied.
    const db = new Database(path);
    db.prepare(
      "INSERT INTO calls (id, function, kind, state, attempt, submitted_at, bytes) VALUES (NULL, 'u/f', 'sync', 'failed', 1, 99, 0)",
    ).run();
    db.close();
    const before = allCalls(path);

    assert.throws(
      () => new SqliteStore(path),
      (err: Error) => err instanceof FennecError && /NOT NULL/.test(err.message),
    );
    const check = new Database(path, { readonly: true });
    assert.equal(check.pragma("user_version", { simple: true }), 2);
    assert.deepEqual(
      check
        .prepare<[], string>("SELECT name FROM sqlite_schema WHERE name LIKE 'calls%' ORDER BY name")
        .pluck()
        .all(),
      [
        "calls",
        "calls_active",
        "calls_callbacks",
        "calls_finished",
        "calls_function",
        "calls_idempotency",
        "calls_leases",
        "calls_parent",
        "calls_queued",
        "calls_submitted",
      ],
    );
    check.close();
    assert.deepEqual(allCalls(path), before);
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

  /** A finished sync call's record, as the gateway hands one over. */
  const syncRecord = (over: Partial<CallRecord> & { id: string }): CallRecord => ({
    function: "u/f",
    kind: "sync",
    state: "succeeded",
    node: "n1",
    parentId: undefined,
    attempt: 1,
    submittedAt: 1_000,
    startedAt: 1_001,
    finishedAt: 1_010,
    startType: "warm",
    queueWaitMs: 0.25,
    initMs: 0,
    ttfbMs: 4.5,
    execMs: 9.125,
    status: 200,
    errorCode: undefined,
    errorMessage: undefined,
    notBefore: undefined,
    idempotencyKey: undefined,
    callbackUrl: undefined,
    ...over,
  });

  const tableRows = (path: string, sql: string): unknown[] => {
    const db = new Database(path, { readonly: true });
    try {
      return db.prepare(sql).all();
    } finally {
      db.close();
    }
  };

  const newStore = async () => {
    const dir = await mkdtemp(join(tmpdir(), "fennec-store-"));
    dirs.push(dir);
    const path = join(dir, "fennec.db");
    return { path, store: new SqliteStore(path) };
  };

  it("upgrades a schema 4 file: its records stay rows of calls, new ones go in a record page, and both are read, listed and deleted", async () => {
    const dir = await mkdtemp(join(tmpdir(), "fennec-store-"));
    dirs.push(dir);
    const path = join(dir, "fennec.db");
    const db = new Database(path);
    db.pragma("auto_vacuum = INCREMENTAL");
    for (const m of MIGRATIONS.slice(0, 4)) db.exec(m);
    db.pragma("user_version = 4");
    const old = syncRecord({ id: timeOrderedUuid(10), function: "u/g", submittedAt: 10 });
    db.prepare(
      `INSERT INTO calls (id, function, kind, state, node, attempt, submitted_at, started_at, finished_at,
        start_type, queue_wait_ms, init_ms, ttfb_ms, exec_ms, status, bytes)
        VALUES (?, 'u/g', 'sync', 'succeeded', 'n1', 1, 10, 1001, 1010, 'warm', 0.25, 0, 4.5, 9.125, 200, 40)`,
    ).run(old.id);
    db.close();

    const store = new SqliteStore(path);
    try {
      const check = new Database(path, { readonly: true });
      assert.equal(check.pragma("user_version", { simple: true }), SCHEMA_VERSION);
      check.close();
      const young = [20, 30].map((t) => syncRecord({ id: timeOrderedUuid(t), submittedAt: t }));
      for (const r of young) store.record(r);
      await store.flush();
      assert.deepEqual(
        tableRows(path, "SELECT n, first_id, last_id FROM record_pages"),
        [{ n: 2, first_id: young[0]!.id, last_id: young[1]!.id }],
        "one page for the batch",
      );
      assert.deepEqual(tableRows(path, "SELECT function, first_id FROM record_page_functions"), [
        { function: "u/f", first_id: young[0]!.id },
      ]);
      assert.deepEqual(tableRows(path, "SELECT id FROM calls"), [{ id: old.id }], "nothing new in calls");
      assert.deepEqual(await store.get(old.id), old);
      assert.deepEqual(await store.get(young[1]!.id), young[1]);
      assert.deepEqual(
        (await store.list({})).map((r) => r.id),
        [young[1]!.id, young[0]!.id, old.id],
      );
      assert.deepEqual(
        (await store.list({ function: "u/g" })).map((r) => r.id),
        [old.id],
      );
      assert.deepEqual(await store.whenFinished(young[0]!.id), young[0]);

      assert.equal(await store.delete(young[0]!.id), true);
      assert.equal(await store.delete(young[0]!.id), false);
      assert.equal(await store.get(young[0]!.id), undefined);
      assert.deepEqual(
        tableRows(path, "SELECT n, first_id FROM record_pages"),
        [{ n: 1, first_id: young[1]!.id }],
        "the page written again without it",
      );
      assert.equal(await store.delete(old.id), true);
      assert.deepEqual(
        (await store.list({})).map((r) => r.id),
        [young[1]!.id],
      );
      await rejectsCode(
        store.finish(young[1]!.id, "n1", { state: "failed", response: undefined, figures: {} }),
        "CALL_STATE",
      );
    } finally {
      await store.close();
    }
  });

  it("keeps as rows the records a page may not hold (an id below a paged one, async kind, a parent), and lists all merged by id", async () => {
    const { path, store } = await newStore();
    try {
      const r = (t: number, over: Partial<CallRecord> = {}) =>
        syncRecord({ id: timeOrderedUuid(t), submittedAt: t, ...over });
      const first = [r(10), r(20, { function: "u/g", status: 500, state: "failed" })];
      for (const x of first) store.record(x);
      await store.flush();
      // A call that began before the last one of the batch before and ended after it was handed
      // over; one with a parent; and newer ones.
      const across = r(15, {
        status: undefined,
        errorCode: "FN_TIMEOUT",
        errorMessage: "slow",
        state: "failed",
      });
      const child = r(40, { parentId: "p1" });
      const second = [r(30), across, child, r(50, { function: "u/g" })];
      for (const x of second) store.record(x);
      await store.flush();
      assert.deepEqual(
        (tableRows(path, "SELECT id FROM calls ORDER BY id") as Array<{ id: string }>).map((x) => x.id),
        [across.id, child.id],
      );
      assert.deepEqual(tableRows(path, "SELECT n FROM record_pages ORDER BY first_id"), [{ n: 2 }, { n: 2 }]);
      for (const x of [...first, ...second]) assert.deepEqual(await store.get(x.id), x);
      const ids = (rs: CallRecord[]) => rs.map((x) => x.id);
      const all = [...first, ...second]
        .map((x) => x.id)
        .sort()
        .reverse();
      assert.deepEqual(ids(await store.list({})), all);
      assert.deepEqual(ids(await store.list({ limit: 3 })), all.slice(0, 3));
      assert.deepEqual(ids(await store.list({ function: "u/g" })), [second[3]!.id, first[1]!.id]);
      assert.deepEqual(ids(await store.list({ function: "u/g", limit: 1 })), [second[3]!.id]);
      assert.deepEqual(ids(await store.list({ state: "failed" })), [first[1]!.id, across.id]);
      assert.deepEqual(ids(await store.list({ status: 500 })), [first[1]!.id]);
      assert.deepEqual(ids(await store.list({ status: "FN_TIMEOUT" })), [across.id]);
      assert.deepEqual(ids(await store.list({ since: 30 })), [second[3]!.id, child.id, second[0]!.id]);
      assert.deepEqual(ids(await store.list({ parentId: "p1" })), [child.id]);
      assert.deepEqual(ids(await store.list({ kind: "async" })), []);

      // Handed over again (a later write of the same id): it replaces the first, wherever that is.
      const again = { ...first[0]!, status: 201 };
      store.record(again);
      assert.deepEqual(await store.get(again.id), again);
      assert.deepEqual(ids(await store.list({})), all);
      assert.deepEqual(ids(await store.list({ status: 201 })), [again.id]);
      assert.equal(await store.delete(again.id), true);
      assert.equal(await store.get(again.id), undefined);
    } finally {
      await store.close();
    }
  });

  it("prunes record pages by bytes whole, oldest first, and by age record by record", async () => {
    const { path, store } = await newStore();
    try {
      const batches = [1_000, 2_000, 3_000].map((at) =>
        [0, 1, 2].map((i) =>
          syncRecord({ id: timeOrderedUuid(at + i), submittedAt: at + i, finishedAt: at + 10 * i }),
        ),
      );
      for (const b of batches) {
        for (const x of b) store.record(x);
        await store.flush();
      }
      const each = batches[0]!.reduce((n, x) => n + x.id.length + x.function.length, 0);
      // Bytes: the oldest page goes whole, no more than it takes.
      assert.deepEqual(await store.prune({ maxAgeMs: 1e12, maxBytes: 2 * each + 1 }, 5_000), {
        calls: 3,
        logLines: 0,
      });
      assert.equal((await store.list({})).length, 6);
      // Age: the records of a page that ended before the cutoff go, the others stay in it.
      assert.deepEqual(await store.prune({ maxAgeMs: 1_000, maxBytes: 2 ** 40 }, 4_010), {
        calls: 4,
        logLines: 0,
      });
      assert.deepEqual(
        (await store.list({})).map((x) => x.id),
        [batches[2]![2]!.id, batches[2]![1]!.id],
      );
      assert.deepEqual(tableRows(path, "SELECT n, first_id FROM record_pages"), [
        { n: 2, first_id: batches[2]![1]!.id },
      ]);
    } finally {
      await store.close();
    }
  });
});
