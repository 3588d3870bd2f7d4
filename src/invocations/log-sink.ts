import { channels, type LogLineEvent } from "../core/events.js";
import type { InvocationStore } from "../store/contract.js";

/**
 * Keeps the function logs drivers publish on `fennec:log` in the store (which writes them behind,
 * batched). The channel is process-wide: a second Fennec in the same process with its own sink
 * keeps the lines too. Returns the function that stops it.
 */
export function sinkLogs(store: InvocationStore, onError: (err: unknown) => void): () => void {
  const listener = (message: unknown): void => {
    try {
      store.appendLogs([message as LogLineEvent]);
    } catch (err) {
      // Logs are kept on a best-effort basis: a store that refuses them never fails a call.
      onError(err);
    }
  };
  channels.log.subscribe(listener);
  return () => void channels.log.unsubscribe(listener);
}
