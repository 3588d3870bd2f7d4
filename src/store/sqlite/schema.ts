import type { Database } from "better-sqlite3";

/**
 * The store's tables, one migration per schema version (`PRAGMA user_version`). Migrations are only
 * ever added, never changed: a database written by an older Fennec opens (upgraded) in a newer one.
 */
export const MIGRATIONS: readonly string[] = [
  // 1: calls (sync records and async calls alike), their kept requests and responses, logs, state.
  `
  CREATE TABLE calls (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    node TEXT,
    parent_id TEXT,
    attempt INTEGER NOT NULL,
    submitted_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    start_type TEXT,
    queue_wait_ms REAL,
    init_ms REAL,
    ttfb_ms REAL,
    exec_ms REAL,
    status INTEGER,
    error_code TEXT,
    error_message TEXT,
    not_before INTEGER,
    idempotency_key TEXT,
    callback_url TEXT,
    lease_until INTEGER,
    -- what this call keeps (request, response, its strings), for retention by bytes
    bytes INTEGER NOT NULL
  );
  CREATE INDEX calls_submitted ON calls (submitted_at);
  CREATE INDEX calls_function ON calls (function, submitted_at);
  CREATE INDEX calls_parent ON calls (parent_id) WHERE parent_id IS NOT NULL;
  CREATE INDEX calls_queued ON calls (submitted_at) WHERE state = 'queued';
  CREATE INDEX calls_leases ON calls (lease_until) WHERE state = 'running';
  CREATE INDEX calls_finished ON calls (finished_at) WHERE finished_at IS NOT NULL;
  CREATE INDEX calls_active ON calls (function, state) WHERE state IN ('queued', 'running', 'dead');
  CREATE UNIQUE INDEX calls_idempotency ON calls (function, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

  CREATE TABLE requests (
    call_id TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL
  ) WITHOUT ROWID;

  CREATE TABLE responses (
    call_id TEXT PRIMARY KEY,
    status INTEGER NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL
  ) WITHOUT ROWID;

  -- AUTOINCREMENT: a seq is never reused after retention removed the newest lines, so a
  -- follower's "after seq" never skips a line.
  CREATE TABLE logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time INTEGER NOT NULL,
    function TEXT NOT NULL,
    call_id TEXT,
    instance_id TEXT,
    stream TEXT NOT NULL,
    text TEXT NOT NULL
  );
  CREATE INDEX logs_function ON logs (function, seq);
  CREATE INDEX logs_call ON logs (call_id, seq) WHERE call_id IS NOT NULL;
  CREATE INDEX logs_time ON logs (time);

  CREATE TABLE state (
    user TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (user, key)
  ) WITHOUT ROWID;

  CREATE TABLE state_appended (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL
  );
  CREATE INDEX state_appended_key ON state_appended (user, key, seq);
  `,
  // 2: an ended call's callback delivery state, so a pending one survives a restart.
  `
  ALTER TABLE calls ADD COLUMN callback_state TEXT;
  CREATE INDEX calls_callbacks ON calls (finished_at) WHERE callback_state = 'pending';
  `,
  // 3: what a sync call's record costs the writer thread (docs/benchmarks.md, issue 12). `calls`
  // becomes a WITHOUT ROWID table clustered on its id: one B-tree where a rowid table kept two
  // (the rows, and the id's own index). Call ids are time-ordered (UUID v7), so a record is
  // appended and listing newest first walks that B-tree backwards: `calls_submitted` goes, and
  // `calls_function` orders by id. `calls_finished` goes too: no query used it (retention
  // compares coalesce(finished_at, submitted_at), callbacks have their own partial index).
  // SQLite's way to change a table: a new one, the rows copied, the old one dropped (its indexes
  // with it), the new one renamed; migrate() runs it in one transaction.
  `
  CREATE TABLE calls_v3 (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    node TEXT,
    parent_id TEXT,
    attempt INTEGER NOT NULL,
    submitted_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    start_type TEXT,
    queue_wait_ms REAL,
    init_ms REAL,
    ttfb_ms REAL,
    exec_ms REAL,
    status INTEGER,
    error_code TEXT,
    error_message TEXT,
    not_before INTEGER,
    idempotency_key TEXT,
    callback_url TEXT,
    lease_until INTEGER,
    bytes INTEGER NOT NULL,
    callback_state TEXT
  ) WITHOUT ROWID;
  INSERT INTO calls_v3 (id, function, kind, state, node, parent_id, attempt, submitted_at, started_at,
      finished_at, start_type, queue_wait_ms, init_ms, ttfb_ms, exec_ms, status, error_code,
      error_message, not_before, idempotency_key, callback_url, lease_until, bytes, callback_state)
    SELECT id, function, kind, state, node, parent_id, attempt, submitted_at, started_at,
      finished_at, start_type, queue_wait_ms, init_ms, ttfb_ms, exec_ms, status, error_code,
      error_message, not_before, idempotency_key, callback_url, lease_until, bytes, callback_state
    FROM calls ORDER BY id;
  DROP TABLE calls;
  ALTER TABLE calls_v3 RENAME TO calls;
  CREATE INDEX calls_function ON calls (function, id);
  CREATE INDEX calls_parent ON calls (parent_id) WHERE parent_id IS NOT NULL;
  CREATE INDEX calls_queued ON calls (submitted_at) WHERE state = 'queued';
  CREATE INDEX calls_leases ON calls (lease_until) WHERE state = 'running';
  CREATE INDEX calls_active ON calls (function, state) WHERE state IN ('queued', 'running', 'dead');
  CREATE UNIQUE INDEX calls_idempotency ON calls (function, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
  CREATE INDEX calls_callbacks ON calls (finished_at) WHERE callback_state = 'pending';
  `,
  // 4: where a sync call forwarded in a cluster came in, and why it went where it ran.
  `
  ALTER TABLE calls ADD COLUMN via TEXT;
  ALTER TABLE calls ADD COLUMN placement TEXT;
  `,
  // 5: who delivers a pending callback when it is not the node that ended the call (one that
  // took it over from a node gone; NULL: that node, \`node\`).
  `
  ALTER TABLE calls ADD COLUMN callback_node TEXT;
  `,
  // 6: sync records in pages (record-pages.ts; docs/architecture.md "Schema", issue 12): one row
  // per batch the writer thread writes, its columns as record-batch.ts hands them over (a page's
  // `nums` are rows of that file's WIDTH numbers: a change to that layout needs a migration).
  // Records already in `calls` stay there; both are read.
  `
  CREATE TABLE record_pages (
    first_id TEXT PRIMARY KEY,
    last_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    -- the earliest coalesce(finished_at, submitted_at) of its records, for retention
    oldest INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    words TEXT NOT NULL,
    text TEXT NOT NULL,
    nums BLOB NOT NULL
  );
  CREATE INDEX record_pages_oldest ON record_pages (oldest);
  CREATE TABLE record_page_functions (
    function TEXT NOT NULL,
    first_id TEXT NOT NULL,
    PRIMARY KEY (function, first_id)
  ) WITHOUT ROWID;
  CREATE INDEX record_page_functions_page ON record_page_functions (first_id);
  `,
];

/** The schema version this Fennec writes. */
export const SCHEMA_VERSION = MIGRATIONS.length;

/**
 * Brings the database to SCHEMA_VERSION. A database from a newer Fennec is refused rather than
 * guessed at.
 */
export function migrate(db: Database, describe: string): void {
  const version = () => db.pragma("user_version", { simple: true }) as number;
  if (version() === 0) {
    // Only a new, empty database can change auto_vacuum without a full VACUUM: set it before the
    // first table, so retention's deletes give space back (incremental_vacuum) instead of leaving
    // free pages inside the file.
    db.pragma("auto_vacuum = INCREMENTAL");
  }
  // IMMEDIATE, and the version read inside: two Fennecs opening a new file at once migrate once.
  db.transaction(() => {
    const from = version();
    if (from > SCHEMA_VERSION)
      throw new Error(
        `${describe} has schema version ${from}, newer than this Fennec's ${SCHEMA_VERSION}: run a newer Fennec or use another --state-dir`,
      );
    for (let v = from; v < SCHEMA_VERSION; v++) db.exec(MIGRATIONS[v]!);
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
  }).immediate();
}
