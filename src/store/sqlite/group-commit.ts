import type { Database } from "better-sqlite3";
import { FennecError } from "../../core/errors.js";
import { whenFree } from "./busy.js";

/**
 * An error that says the database cannot write now (a full disk, an I/O error, a damaged file, a
 * lock): the whole group fails. Anything else (a refusal, a value SQLite will not take) is the one
 * operation's.
 */
function failsTheGroup(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== "string") return false;
  return /^SQLITE_(FULL|IOERR|CORRUPT|NOTADB|BUSY|LOCKED|NOMEM|READONLY|CANTOPEN|PROTOCOL|PERM|AUTH|INTERRUPT)/.test(
    code,
  );
}

/** What an operation may ask of the transaction it runs in. */
export interface TxContext {
  /** Runs `fn` once the transaction is on disk (to wake waiters only for what is durable). */
  onCommit(fn: () => void): void;
}

interface Pending {
  readonly op: (tx: TxContext) => unknown;
  readonly resolve: (value: unknown) => void;
  readonly reject: (err: unknown) => void;
}

/**
 * Group commit: the writes asked for in the same turn of the event loop run in one transaction,
 * so they share one fsync, then all resolve. An operation that fails on its own (a refusal, a
 * value too big) is rolled back to its savepoint and fails alone; a database that cannot write
 * (a full disk) fails the whole group, which is rolled back, so no caller is told "done" for what
 * is not on disk.
 */
export class GroupCommit {
  readonly #db: Database;
  readonly #fail: (err: unknown) => Error;
  #pending: Pending[] = [];
  #scheduled = false;
  /** The group being written: the next one waits for it, so groups commit in order. */
  #last: Promise<void> = Promise.resolve();

  constructor(db: Database, fail: (err: unknown) => Error) {
    this.#db = db;
    this.#fail = fail;
  }

  run<T>(op: (tx: TxContext) => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#pending.push({ op, resolve: resolve as (v: unknown) => void, reject });
      if (this.#scheduled) return;
      this.#scheduled = true;
      // setImmediate, not a microtask: requests parsed in the same poll phase join the group.
      setImmediate(() => void this.commit());
    });
  }

  /** Writes what is pending now, after the group before it (close() calls it; otherwise it runs on its own). */
  commit(): Promise<void> {
    this.#last = this.#last.then(() => this.#commit());
    return this.#last;
  }

  async #commit(): Promise<void> {
    this.#scheduled = false;
    const group = this.#pending;
    if (group.length === 0) return;
    this.#pending = [];
    let outcomes: Array<{ ok: boolean; value: unknown }> = [];
    let committed: Array<() => void> = [];
    try {
      // Tried again whole while the writer thread holds the lock: BEGIN IMMEDIATE fails before
      // anything ran, so no operation runs twice.
      await whenFree(() => {
        outcomes = [];
        committed = [];
        const tx: TxContext = { onCommit: (fn) => committed.push(fn) };
        this.#db
          .transaction(() => {
            for (const p of group) {
              const mark = committed.length;
              try {
                // Nested: a SAVEPOINT, so an operation that fails is undone alone.
                outcomes.push({ ok: true, value: this.#db.transaction(p.op)(tx) });
              } catch (err) {
                if (failsTheGroup(err)) throw err;
                committed.length = mark;
                outcomes.push({ ok: false, value: err instanceof FennecError ? err : this.#fail(err) });
              }
            }
          })
          .immediate();
      });
    } catch (err) {
      const failure = this.#fail(err);
      for (const p of group) p.reject(failure);
      return;
    }
    group.forEach((p, i) => {
      const o = outcomes[i]!;
      if (o.ok) p.resolve(o.value);
      else p.reject(o.value);
    });
    for (const fn of committed) fn();
  }
}
