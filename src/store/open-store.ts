import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { FennecError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { SqliteStore } from "./sqlite-store.js";

/** The store's file in a state directory. */
export const STORE_FILE = "fennec.db";

/**
 * Opens the embedded store at `<stateDir>/fennec.db`, creating the directory (and the database)
 * when they are not there. Every failure is a FennecError that names the file and what to do;
 * a damaged file is left exactly as it was found, for its owner to inspect or restore.
 */
export function openStore(stateDir: string, options: { readonly log?: Logger } = {}): SqliteStore {
  const dir = resolve(stateDir);
  const file = join(dir, STORE_FILE);
  try {
    // 0o700: the store keeps request bodies and results, which are the users' data.
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new FennecError(
      "STORE_UNAVAILABLE",
      `cannot create the state directory ${dir}: ${(err as Error).message} (choose another with --state-dir)`,
      { cause: err },
    );
  }
  try {
    return new SqliteStore(file, options);
  } catch (err) {
    if (!(err instanceof FennecError)) throw err;
    if (err.code === "STORE_CORRUPT")
      throw new FennecError(
        "STORE_CORRUPT",
        `${file} is not a usable invocation store (${(err.cause as Error | undefined)?.message ?? err.message}). ` +
          `Fennec left it untouched. Move it aside (mv ${file} ${file}.damaged, and ${file}-wal if there) to start with an empty store, ` +
          `restore it from a backup, or start with another --state-dir.`,
        { cause: err, details: { file } },
      );
    throw new FennecError(err.code, err.message, { cause: err, details: { file } });
  }
}
