import type { NatsConnection } from "@nats-io/transport-node";

/**
 * Calls `listener` whenever a server of the NATS cluster leaves it (the connected server's INFO
 * update drops its address: nats.js's `update` status, within milliseconds of the loss), and
 * whenever this client reconnects (the server it was connected to is the one lost: its watches
 * lived there too, and the client's other servers may never send it an update naming the loss).
 *
 * Why: a key-value watch is an ordered consumer that lives on one server. When that server dies
 * and this client is connected to another, nats.js notices only after two missed idle heartbeats,
 * 30 s apart, so the watch is silent for about a minute. A watch re-opened at once is placed on a
 * live server. Returns a function that stops listening (the listening also ends with the connection).
 */
export function onServerLost(nc: NatsConnection, listener: () => void): () => void {
  let stopped = false;
  void (async () => {
    for await (const s of nc.status()) {
      if (stopped) return;
      if ((s.type === "update" && (s.deleted?.length ?? 0) > 0) || s.type === "reconnect") listener();
    }
  })().catch(() => undefined);
  return () => {
    stopped = true;
  };
}
