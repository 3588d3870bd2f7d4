/**
 * The gateway's connection never waits inside SQLite for a lock (`timeout: 0`): a busy handler
 * would sleep on the event loop's thread. When the writer thread holds the write lock, an
 * operation fails at once with SQLITE_BUSY, and is tried again a moment later from a timer.
 */
const RETRY_MS = 2;
/** Longer than any batch the writer thread commits; past it, something else holds the file. */
const GIVE_UP_MS = 10_000;

const isBusy = (err: unknown) => {
  const code = (err as { code?: unknown } | null)?.code;
  return code === "SQLITE_BUSY" || code === "SQLITE_BUSY_SNAPSHOT" || code === "SQLITE_LOCKED";
};

export async function whenFree<T>(op: () => T): Promise<T> {
  const start = Date.now();
  for (;;) {
    try {
      return op();
    } catch (err) {
      if (!isBusy(err) || Date.now() - start > GIVE_UP_MS) throw err;
    }
    await new Promise((r) => setTimeout(r, RETRY_MS));
  }
}
