/**
 * Where a synchronous call runs in a cluster, and getting it there: the gateway asks the router
 * before it reads a call's body (docs/cluster.md, "Placement" and "Forwarding"). Built only by a
 * node started with `--cluster`: a single node has no router and pays nothing.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { CallAbort } from "../core/call-abort.js";
import { FennecError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { functionKey, type FunctionId } from "../core/types.js";
import type { FunctionConfig } from "../config/function-config.js";
import {
  FORWARDED_BY_HEADER,
  NODE_TTL_MS,
  type ClusterView,
  type NodeInfo,
  type Placement,
  type PlacementRule,
} from "./contract.js";
import { Forwarder, PLACEMENT_HEADER, type ForwardOutcome } from "./forward.js";
import { FORWARD_AUTH_HEADER, type ForwardAuth } from "./forward-auth.js";
import { CALL_ID_HEADER, REQUEST_ID_HEADER } from "../gateway/http-util.js";

/** A client's call as the gateway hands it over to be forwarded. */
export interface ForwardCall {
  req: IncomingMessage;
  res: ServerResponse;
  url: string;
  callId: string;
  requestId: string;
  cancel: CallAbort;
}

export interface CallRouterOptions {
  readonly view: ClusterView;
  readonly rule: PlacementRule;
  /** The function's config (the scheduler's `configOf`): its sandbox and memory decide. */
  readonly configOf: (id: FunctionId) => FunctionConfig | Promise<FunctionConfig>;
  /** The sandbox a function needs, as `NodeInfo.sandboxes` names them, and one instance's memory. */
  readonly describe: (config: FunctionConfig) => { readonly sandbox: string; readonly memoryMiB: number };
  readonly log: Logger;
  /** Signs the calls this node forwards and checks those forwarded here (the cluster's key). */
  readonly auth: ForwardAuth;
  /** How long a node that refused a connection gets no calls (unless it restarts or leaves first). */
  readonly excludeMs?: number;
}

/** A call this node forwards: where to, and the config it was placed by. */
export interface Route {
  readonly placement: Placement;
  readonly node: NodeInfo;
  readonly config: FunctionConfig;
}

/** The router as the gateway sees it. */
export interface CallRouter {
  /** This node's name: `x-fennec-node` of what it serves. */
  readonly self: string;
  /**
   * For a request forwarded here by another node: that node, the placement's reason (what its
   * record says) and the call id it runs under. Undefined for a client's request. Throws
   * FORWARD_UNAUTHENTICATED for a request with any of the forwarding headers whose signature is
   * not valid: it is refused, never served as a client's (forward-auth.ts).
   */
  forwardedBy(req: IncomingMessage): Forwarded | undefined;
  /**
   * Where a client's call of `id` goes: undefined to run here. Throws NO_NODE_FOR_SANDBOX when no
   * live node has its sandbox. A function whose config cannot be had runs here (which says why).
   */
  route(id: FunctionId): Route | undefined | Promise<Route | undefined>;
  /** Streams the call to its node and the answer back; see `Forwarder.forward`. */
  forward(route: Route, call: ForwardCall): Promise<ForwardOutcome>;
  close(): Promise<void>;
}

/** A call another node forwarded here, as its signed headers say. */
export interface Forwarded {
  readonly via: string;
  readonly placement: string | undefined;
  readonly callId: string;
}

/** Node names as membership allows them (the header is checked before it is believed). */
const NODE_NAME = /^[A-Za-z0-9._-]{1,64}$/;
const REASONS = new Set(["warm", "home", "spill"]);
/** A call id another node forwarded with its call (a UUID, as `newCallId` makes them). */
const FORWARDED_CALL_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export class ClusterRouter implements CallRouter {
  readonly #o: CallRouterOptions;
  readonly #forwarder = new Forwarder();
  /** Nodes that just refused a connection: name → the incarnation refused and until when. */
  readonly #excluded = new Map<string, { incarnation: string; until: number }>();
  /** Calls this node has forwarded and not yet seen end, by node: aborted if it leaves. */
  readonly #running = new Map<string, Set<{ incarnation: string; cancel: CallAbort }>>();
  /** Of those, how many per `node\0function`: slots a heartbeat may still show free. */
  readonly #taken = new Map<string, number>();
  readonly #stopWatching: () => void;

  constructor(options: CallRouterOptions) {
    this.#o = options;
    this.#stopWatching = options.view.onChange((event) => {
      const { node } = event;
      // Left, or back under a new incarnation (restarted): calls to the old process are lost.
      const gone =
        event.type === "left"
          ? (_: string) => true
          : (incarnation: string) => incarnation !== node.incarnation;
      const calls = this.#running.get(node.name);
      if (calls) {
        for (const c of [...calls]) {
          if (!gone(c.incarnation)) continue;
          c.cancel.abort(
            new FennecError(
              "NODE_LOST",
              `node ${node.name} left the cluster while the call ran there (it may have run in part)`,
              { details: { node: node.name } },
            ),
          );
        }
      }
      if (event.type === "left") this.#forwarder.drop(node.url);
      const ex = this.#excluded.get(node.name);
      if (ex && (event.type === "left" || ex.incarnation !== node.incarnation))
        this.#excluded.delete(node.name);
    });
  }

  get self(): string {
    return this.#o.view.self;
  }

  forwardedBy(req: IncomingMessage): Forwarded | undefined {
    const h = req.headers;
    const from = h[FORWARDED_BY_HEADER];
    const reason = h[PLACEMENT_HEADER];
    const signature = h[FORWARD_AUTH_HEADER];
    if (from === undefined && reason === undefined && signature === undefined) return undefined;
    const callId = h[CALL_ID_HEADER];
    const requestId = h[REQUEST_ID_HEADER];
    // Every field the signature covers, as sent (a repeated header is not one this node signs).
    const fields = {
      from: typeof from === "string" ? from : "",
      to: this.self,
      callId: typeof callId === "string" ? callId : "",
      requestId: typeof requestId === "string" ? requestId : "",
      placement: typeof reason === "string" ? reason : "",
      method: req.method ?? "",
      url: req.url ?? "",
    };
    this.#o.auth.verify(fields, typeof signature === "string" ? signature : undefined);
    // Signed by a member, so well-formed; checked anyway, as these go into records.
    if (!NODE_NAME.test(fields.from) || !FORWARDED_CALL_ID.test(fields.callId))
      throw new FennecError("FORWARD_UNAUTHENTICATED", "a forwarded call names no valid node or call id");
    return {
      via: fields.from,
      placement: REASONS.has(fields.placement) ? fields.placement : undefined,
      callId: fields.callId,
    };
  }

  route(id: FunctionId): Route | undefined | Promise<Route | undefined> {
    let config: FunctionConfig | Promise<FunctionConfig>;
    try {
      config = this.#o.configOf(id);
    } catch {
      return undefined;
    }
    if (config instanceof Promise)
      return config.then(
        (c) => this.#place(c),
        () => undefined,
      );
    return this.#place(config);
  }

  #place(config: FunctionConfig): Route | undefined {
    const { sandbox, memoryMiB } = this.#o.describe(config);
    const fn = config.key;
    const now = Date.now();
    const nodes: NodeInfo[] = [];
    for (const n of this.#o.view.nodes()) {
      const ex = this.#excluded.get(n.name);
      if (ex && ex.incarnation === n.incarnation && ex.until > now) continue;
      nodes.push(this.#withOwnCalls(n, fn));
    }
    const placement = this.#o.rule.place({ function: fn, sandbox, memoryMiB }, nodes, this.self);
    if (!placement) {
      throw new FennecError(
        "NO_NODE_FOR_SANDBOX",
        `no live node of the cluster has the ${sandbox} sandbox that ${fn} needs (see fennec nodes)`,
        { details: { sandbox } },
      );
    }
    if (placement.node === this.self) return undefined;
    const node = nodes.find((n) => n.name === placement.node);
    return node ? { placement, node, config } : undefined;
  }

  /**
   * A heartbeat up to 2 s old may show slots free that this node's own forwarded calls have
   * since taken (OpenWhisk's controller keeps such books too): they are subtracted.
   */
  #withOwnCalls(n: NodeInfo, fn: string): NodeInfo {
    const load = n.functions[fn];
    const taken = this.#taken.get(`${n.name}\0${fn}`);
    if (!load || !taken || n.name === this.self) return n;
    return {
      ...n,
      functions: { ...n.functions, [fn]: { ...load, freeSlots: Math.max(0, load.freeSlots - taken) } },
    };
  }

  async forward(route: Route, call: ForwardCall): Promise<ForwardOutcome> {
    const { node, placement, config } = route;
    const entry = { incarnation: node.incarnation, cancel: call.cancel };
    let calls = this.#running.get(node.name);
    if (!calls) this.#running.set(node.name, (calls = new Set()));
    calls.add(entry);
    const takenKey = `${node.name}\0${config.key}`;
    this.#taken.set(takenKey, (this.#taken.get(takenKey) ?? 0) + 1);
    try {
      const signature = this.#o.auth.sign({
        from: this.self,
        to: node.name,
        callId: call.callId,
        requestId: call.requestId,
        placement: placement.reason,
        method: call.req.method ?? "GET",
        url: call.url,
      });
      const outcome = await this.#forwarder.forward({
        req: call.req,
        res: call.res,
        url: call.url,
        callId: call.callId,
        requestId: call.requestId,
        from: this.self,
        to: { name: node.name, url: node.url, reason: placement.reason },
        signature,
        forwardCredentials: config.forwardCredentials,
        signal: call.cancel,
      });
      if (outcome.unreachable) {
        // New calls go elsewhere at once, not after the node's heartbeats stop (up to NODE_TTL_MS).
        this.#excluded.set(node.name, {
          incarnation: node.incarnation,
          until: Date.now() + (this.#o.excludeMs ?? NODE_TTL_MS),
        });
        this.#o.log.warn("a node could not be reached: no calls go to it for now", {
          node: node.name,
          url: node.url,
          function: functionKey(config.id),
        });
      }
      return outcome;
    } finally {
      calls.delete(entry);
      if (calls.size === 0) this.#running.delete(node.name);
      const left = (this.#taken.get(takenKey) ?? 1) - 1;
      if (left > 0) this.#taken.set(takenKey, left);
      else this.#taken.delete(takenKey);
    }
  }

  async close(): Promise<void> {
    this.#stopWatching();
    await this.#forwarder.close();
  }
}
