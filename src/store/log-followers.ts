import type { LogQuery, StoredLogLine } from "./contract.js";

type Filter = Pick<LogQuery, "function" | "callId">;

/** Who follows which logs (`followLogs`), told of each line once it is stored and has its seq. */
export class LogFollowers {
  readonly #followers = new Set<{
    readonly filter: Filter;
    readonly listener: (line: StoredLogLine) => void;
  }>();

  follow(filter: Filter, listener: (line: StoredLogLine) => void): () => void {
    const entry = { filter: { ...filter }, listener };
    this.#followers.add(entry);
    return () => void this.#followers.delete(entry);
  }

  get any(): boolean {
    return this.#followers.size > 0;
  }

  tell(line: StoredLogLine): void {
    for (const { filter, listener } of this.#followers) {
      if (filter.function !== undefined && filter.function !== line.function) continue;
      if (filter.callId !== undefined && filter.callId !== line.callId) continue;
      // One follower's fault must not stop the others, nor the write that told them.
      try {
        listener(line);
      } catch {
        /* the follower's own error: its stream ends it */
      }
    }
  }
}
