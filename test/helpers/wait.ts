/**
 * Waiting for events in tests. CI runs on a busy machine, so a test never sleeps a fixed time and
 * hopes: it waits for what it needs, with a deadline generous enough that only a real failure
 * reaches it.
 */

/** How long a test waits for something that normally takes milliseconds before calling it a failure. */
export const GENEROUS_MS = 60_000;

/**
 * Resolves with the first truthy value `probe` returns (it is called again every `intervalMs`);
 * rejects naming `what` (and the last probe error, if any) once `timeoutMs` has passed.
 */
export async function waitFor<T>(
  what: string,
  probe: () => T | Promise<T>,
  { timeoutMs = GENEROUS_MS, intervalMs = 20 }: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value) return value;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const why = lastError instanceof Error ? `: ${lastError.message}` : "";
      throw new Error(`gave up after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
