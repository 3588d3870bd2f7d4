import type { Database, Statement } from "better-sqlite3";
import { FennecError } from "../../core/errors.js";
import { blob } from "./rows.js";

/**
 * The largest state value (or append) the store takes. The real per-user limits are the call
 * host's; this only keeps an absurd size (a bug, a hostile offset) from reaching SQLite, whose
 * own limit is 1 GB per value.
 */
export const MAX_STATE_BYTES = 256 * 2 ** 20;
const MAX_KEY_LENGTH = 4096;

function check(user: string, key: string, bytes: number): void {
  if (user.length > MAX_KEY_LENGTH || key.length > MAX_KEY_LENGTH)
    throw new FennecError(
      "STATE_TOO_LARGE",
      `a state key or user name longer than ${MAX_KEY_LENGTH} characters`,
    );
  if (!Number.isSafeInteger(bytes) || bytes < 0 || bytes > MAX_STATE_BYTES)
    throw new FennecError(
      "STATE_TOO_LARGE",
      `a state value of ${bytes} bytes is over the store's ${MAX_STATE_BYTES}`,
    );
}

const u8 = (b: Buffer): Uint8Array => new Uint8Array(b.buffer, b.byteOffset, b.byteLength);

/** Per-user state: a value per (user, key) and, apart from it, the key's append log. */
export class StateOps {
  readonly #get: Statement<[string, string], Buffer>;
  readonly #set: Statement;
  readonly #append: Statement;
  readonly #appended: Statement<[string, string], Buffer>;
  readonly #clearAppended: Statement;
  readonly #delete: Statement;
  readonly #keys: Statement<[string, string], string>;

  constructor(db: Database) {
    this.#get = db
      .prepare<[string, string], Buffer>("SELECT value FROM state WHERE user = ? AND key = ?")
      .pluck();
    this.#set = db.prepare("INSERT OR REPLACE INTO state (user, key, value) VALUES (?, ?, ?)");
    this.#append = db.prepare("INSERT INTO state_appended (user, key, value) VALUES (?, ?, ?)");
    this.#appended = db
      .prepare<[string, string], Buffer>(
        "SELECT value FROM state_appended WHERE user = ? AND key = ? ORDER BY seq",
      )
      .pluck();
    this.#clearAppended = db.prepare("DELETE FROM state_appended WHERE user = ? AND key = ?");
    this.#delete = db.prepare("DELETE FROM state WHERE user = ? AND key = ?");
    this.#keys = db
      .prepare<[string, string], string>(
        "SELECT key FROM state WHERE user = ? UNION SELECT key FROM state_appended WHERE user = ? ORDER BY key",
      )
      .pluck();
  }

  get(user: string, key: string): Uint8Array | undefined {
    const value = this.#get.get(user, key);
    return value === undefined ? undefined : u8(value);
  }

  set(user: string, key: string, value: Uint8Array): void {
    check(user, key, value.byteLength);
    this.#set.run(user, key, blob(value));
  }

  write(user: string, key: string, offset: number, value: Uint8Array): void {
    if (!Number.isSafeInteger(offset) || offset < 0)
      throw new FennecError("BAD_REQUEST", `a state offset must be a whole number from 0, got ${offset}`);
    check(user, key, offset + value.byteLength);
    const old = this.#get.get(user, key);
    const size = Math.max(old?.byteLength ?? 0, offset + value.byteLength);
    // Buffer.alloc zero-fills: a write past the end grows the value with zeros.
    const next = Buffer.alloc(size);
    old?.copy(next);
    next.set(value, offset);
    this.#set.run(user, key, next);
  }

  append(user: string, key: string, value: Uint8Array): void {
    check(user, key, value.byteLength);
    this.#append.run(user, key, blob(value));
  }

  appended(user: string, key: string): Uint8Array[] {
    return this.#appended.all(user, key).map(u8);
  }

  clearAppended(user: string, key: string): void {
    this.#clearAppended.run(user, key);
  }

  delete(user: string, key: string): boolean {
    const value = this.#delete.run(user, key).changes;
    const appended = this.#clearAppended.run(user, key).changes;
    return value + appended > 0;
  }

  keys(user: string): string[] {
    return this.#keys.all(user, user);
  }
}
