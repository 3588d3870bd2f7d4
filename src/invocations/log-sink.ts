import { channels, type LogLineEvent } from "../core/events.js";
import type { InvocationStore, LogLine } from "../store/contract.js";

/**
 * Keeps the function logs drivers publish on `fennec:log` in the store, handed over once per turn
 * of the event loop rather than line by line. The channel is process-wide: a second Fennec in the
 * same process with its own sink keeps the lines too. Returns the function that stops it (and
 * hands over what is pending).
 */
export function sinkLogs(store: InvocationStore, onError: (err: unknown) => void): () => void {
  let pending: LogLine[] = [];
  let scheduled: NodeJS.Immediate | undefined;
  const flush = (): void => {
    scheduled = undefined;
    if (pending.length === 0) return;
    const lines = pending;
    pending = [];
    try {
      store.appendLogs(lines);
    } catch (err) {
      // Logs are kept on a best-effort basis: a store that refuses them never fails a call.
      onError(err);
    }
  };
  const listener = (message: unknown): void => {
    pending.push(message as LogLineEvent);
    scheduled ??= setImmediate(flush);
  };
  channels.log.subscribe(listener);
  return () => {
    channels.log.unsubscribe(listener);
    if (scheduled) clearImmediate(scheduled);
    flush();
  };
}
