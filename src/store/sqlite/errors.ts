import { FennecError } from "../../core/errors.js";

/** SQLite's primary result code of an error thrown by better-sqlite3 (`SQLITE_FULL`, ...). */
function sqliteCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && code.startsWith("SQLITE_") ? code : undefined;
}

// ENOSPC while writing the WAL or the database is SQLITE_FULL. A few other paths (growing the WAL
// index in -shm) report it as an SQLITE_IOERR_* without the errno: those become STORE_UNAVAILABLE,
// which is still a refusal, never a false "accepted".
const isFull = (err: unknown): boolean => sqliteCode(err) === "SQLITE_FULL";

const isCorrupt = (err: unknown): boolean => {
  const code = sqliteCode(err);
  return code === "SQLITE_NOTADB" || code?.startsWith("SQLITE_CORRUPT") === true;
};

/** A store failure as a FennecError with a code the gateway maps to a status (507 for a full disk). */
export function storeError(err: unknown, describe: string, doing: string): FennecError {
  if (err instanceof FennecError) return err;
  const message = err instanceof Error ? err.message : String(err);
  if (isFull(err))
    return new FennecError(
      "STORE_FULL",
      `${describe}: the disk is full while ${doing}; nothing was accepted`,
      {
        cause: err,
      },
    );
  if (isCorrupt(err))
    return new FennecError("STORE_CORRUPT", `${describe} is damaged (${message}) while ${doing}`, {
      cause: err,
    });
  return new FennecError("STORE_UNAVAILABLE", `${describe}: ${message} while ${doing}`, { cause: err });
}
