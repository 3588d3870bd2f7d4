import { toFennecError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import type { NodeEvent, NodeInfo } from "./contract.js";

/** A clean stop drains for up to 10 s (`close(graceMs)`), then closes its callbacks: a margin after. */
const DRAIN_MS = 15_000;

/** What the takeover needs of membership (`Membership`). */
export interface TakeoverView {
  onChange(listener: (event: NodeEvent) => void): () => void;
  /** Asked of the bucket itself: how the node told as `left` went (`Membership.departure`). */
  departure(info: NodeInfo): Promise<"dead" | "stopped" | "alive">;
  /** The process this one took the name over from at start, if it died under it. */
  readonly predecessor?: NodeInfo | undefined;
}

/** What the takeover needs of the async engine (`AsyncEngine.takeOver`). */
export interface TakeoverEngine {
  takeOver(holder: string): Promise<{ readonly calls: number; readonly callbacks: number }>;
}

/**
 * A node that leaves the cluster (its heartbeats stopped for the TTL, it stopped cleanly, or it
 * came back as a new process) has its async work taken back at once (docs/cluster.md, "The
 * invocation store"): its running calls are queued again and its pending callbacks sent from
 * here, instead of waiting for its leases to run out. Every live node does it; compare-and-set
 * in the store makes each call and callback move once. Calls are leased under the node's
 * incarnation, which is what `left` names.
 *
 * Before it acts, a node asks the bucket how the node went (`departure`): a watch that lags must
 * not hand a live node's calls to others, and a node that stopped cleanly is left its drain. A
 * node that was only cut off (a partition, a frozen process) and comes back under the same
 * incarnation finds its calls taken: its late finish is refused (CALL_STATE) once another node
 * leased them, as after a lease ran out.
 *
 * It listens from the moment membership joins, before the engine exists (a node that starts while
 * another's entry ages out must not miss its departure): what leaves before `ready(engine)` is
 * taken back then.
 */
export function startTakeover(o: {
  readonly view: TakeoverView;
  readonly log: Logger;
  /** How long a node that stopped cleanly is left to drain before its leftovers are taken (default 15 s). */
  readonly drainMs?: number;
}): {
  /** The engine that takes the calls back; departures seen until now are handled at once. */
  ready(engine: TakeoverEngine): void;
  stop(): void;
} {
  let engine: TakeoverEngine | undefined;
  const waiting: Array<readonly [NodeInfo, string]> = [];
  let stopped = false;
  const take = async (info: NodeInfo, why: string): Promise<void> => {
    if (stopped) return;
    if (!engine) {
      waiting.push([info, why]);
      return;
    }
    try {
      const { calls, callbacks } = await engine.takeOver(info.incarnation);
      if (calls + callbacks > 0)
        o.log.info("took back the async calls of a node that left", {
          node: info.name,
          incarnation: info.incarnation,
          why,
          calls,
          callbacks,
        });
    } catch (err) {
      o.log.warn("could not take back the async calls of a node that left; their leases give them back", {
        node: info.name,
        error: toFennecError(err).message,
      });
    }
  };
  const timers = new Set<NodeJS.Timeout>();
  const stopListening = o.view.onChange((event) => {
    if (event.type !== "left" || stopped) return;
    void (async () => {
      const how = await o.view.departure(event.node).catch(() => "alive" as const);
      if (stopped) return;
      if (how === "alive") {
        o.log.info("a node this one saw leave still heartbeats: its calls stay with it", {
          node: event.node.name,
        });
        return;
      }
      if (how === "dead") return take(event.node, "stopped heartbeating");
      // A clean stop: the node finishes its running calls, or puts them back whole, within its
      // drain; taking them now would run them twice. What is left after it (a drain cut by a
      // SIGKILL, callbacks it had not delivered) is taken then.
      const timer = setTimeout(() => {
        timers.delete(timer);
        void take(event.node, "stopped");
      }, o.drainMs ?? DRAIN_MS);
      timer.unref();
      timers.add(timer);
    })();
  });
  const before = o.view.predecessor;
  if (before) void take(before, "restarted under its name");
  return {
    ready(e) {
      engine = e;
      for (const [info, why] of waiting.splice(0)) void take(info, why);
    },
    stop() {
      stopped = true;
      stopListening();
      for (const t of timers) clearTimeout(t);
    },
  };
}
