import { timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { CallAbort } from "../core/call-abort.js";
import { FennecError, toFennecError } from "../core/errors.js";
import type { CallHost } from "../core/call-host.js";
import type { Logger } from "../core/log.js";
import { quoteForMessage } from "../core/names.js";
import { functionKey, type FunctionId, type InvokeRequest } from "../core/types.js";
import type { FunctionConfig } from "../config/function-config.js";
import type { DirectoryRegistry } from "../registry/registry.js";
import type { ReadinessHub } from "../sandbox/readiness.js";
import type { Scheduler } from "../scheduler/scheduler.js";
import type { StatsCollector } from "../metrics/stats.js";
import type { PrometheusMetrics } from "../metrics/prometheus.js";
import type { AsyncEngine } from "../invocations/async-engine.js";
import { NODE_HEADER, type NodeInfo } from "../cluster/contract.js";
import type { Callbacks } from "../invocations/callbacks.js";
import type { Invocations } from "../invocations/invocations.js";
import type { InvocationStore } from "../store/contract.js";
import { AsyncRoutes } from "./async-routes.js";
import {
  CALL_ID_HEADER,
  closeAfterResponse,
  readBody,
  REQUEST_ID_HEADER,
  requestIdOf,
  sendError,
  sendJson,
} from "./http-util.js";
import type { AllowedHosts } from "./allowed-hosts.js";
import { JSON_BODY, MODULE_BODY, NUMBER_BODY, refuseCrossSite } from "./cross-site.js";
import { NOT_FORWARDED, sendResponse, sendWhole } from "./function-response.js";
import { requestBody } from "./request-body.js";
import { functionId, parseTarget, type Target } from "./routes.js";
import { deployCheck, deployFromJson, describeFunctions, type ModuleValidator } from "./admin.js";
import { serveCallRoutes } from "./call-routes.js";
import { sandboxOf } from "../cluster/sandboxes.js";
import { serveStateRoutes, STATE_BODY } from "./state-routes.js";
import type { CallRouter, Route } from "../cluster/router.js";

export interface GatewayOptions {
  readonly scheduler: Scheduler;
  readonly registry: DirectoryRegistry;
  readonly hub: ReadinessHub;
  readonly stats: StatsCollector;
  readonly metrics: PrometheusMetrics;
  /** Checks an uploaded module; throws FN_BAD_MODULE with the reason. */
  readonly validateModule: ModuleValidator;
  readonly log: Logger;
  /** Largest invocation body. */
  readonly bodyLimitBytes: number;
  /** Largest upload (module or deploy document). */
  readonly uploadLimitBytes: number;
  /** Bearer token guarding the admin API and uploads; undefined leaves them open. */
  readonly token: string | undefined;
  /** The Host names this gateway answers to (DNS rebinding); checked on every route but two. */
  readonly allowedHosts: AllowedHosts;
  /** What the sandboxes report of themselves in /stats (e.g. which accelerator runs VMs). */
  readonly backends?: () => Record<string, unknown>;
  /** Calls, their records, function logs, async calls' results and per-user state. */
  readonly store: InvocationStore;
  /** The sync-call service: call ids, call hosts, records. */
  readonly invocations: Invocations;
  /** Runs the async calls the store holds; woken when one is submitted or replayed. */
  readonly engine: AsyncEngine;
  /** Checks and delivers `X-Callback-Url`s. */
  readonly callbacks: Callbacks;
  /**
   * A cluster's placement of sync calls (`--cluster`): a call placed on another node is forwarded
   * there before its body is read. Undefined on a single node, which then pays nothing for it.
   */
  readonly router?: CallRouter | undefined;
  /** This node's name: every response carries it (`x-fennec-node`). */
  readonly node: string;
  /** The live nodes (`GET /system/nodes`): the cluster's, or this one alone. */
  readonly nodes: () => readonly NodeInfo[];
}

/** How the call started (`cold`, `warm`, `prebooted`, `restored`). */
const START_HEADER = "x-fennec-start";

/** Default function.toml for a module uploaded without one (Faasm's PUT creates functions). */
export function defaultWasmToml(moduleFile: string): string {
  return `# created by an upload\nkeepalive = 60\nconcurrent-requests = 1\n\n[wasm]\nmodule = "${moduleFile}"\nmemory = 64\n`;
}

/** The HTTP gateway: every route of the brief, one error format, a correlation id on every response. */
export class Gateway {
  readonly #o: GatewayOptions;
  readonly #async: AsyncRoutes;

  constructor(options: GatewayOptions) {
    this.#o = options;
    this.#async = new AsyncRoutes({
      store: options.store,
      engine: options.engine,
      callbacks: options.callbacks,
      configOf: (id) => options.scheduler.configOf(id),
      bodyLimitBytes: options.bodyLimitBytes,
      guardAdmin: (req) => {
        refuseCrossSite(req, NUMBER_BODY);
        this.#authorize(req);
      },
    });
  }

  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    const requestId = requestIdOf(req);
    this.#route(req, res, requestId).catch((err: unknown) => {
      const error = toFennecError(err);
      if (error.code === "INTERNAL")
        this.#o.log.error("request failed", { requestId, url: req.url, error: error.message });
      // A call's route stamps its own (with its call id) on every way out but the warm answer.
      if (!res.headersSent && !res.hasHeader(REQUEST_ID_HEADER)) this.#stamp(res, requestId);
      // A refused request's body is not read (it may be huge, and is not wanted): the connection
      // is closed once the answer is out instead of draining it for the next request.
      if (!req.complete) closeAfterResponse(req, res);
      sendError(res, error, requestId);
    });
  };

  /**
   * The headers every response carries: the request id and the node that answered (a call
   * forwarded to another node gets that node's, forward.ts), and a call's id when it is one.
   */
  #stamp(res: ServerResponse, requestId: string, callId?: string): void {
    res.setHeader(REQUEST_ID_HEADER, requestId);
    res.setHeader(NODE_HEADER, this.#o.node);
    if (callId !== undefined) res.setHeader(CALL_ID_HEADER, callId);
  }

  async #route(req: IncomingMessage, res: ServerResponse, requestId: string): Promise<void> {
    const target = parseTarget(req.url ?? "/");
    const [first, a, b] = target.segments;
    const method = req.method ?? "GET";
    // A call's headers are written with its answer (#invoke); every other route's are set now.
    if (first !== "invoke" && (first !== "f" || method === "PUT")) this.#stamp(res, requestId);
    // Every route answers only to known host names, token or not: a rebinding page could
    // otherwise read functions' answers, stats and metrics of a loopback-only Fennec, and deploy
    // when there is no token. Readiness callbacks (an unguessable id, sent by sandboxes by
    // whatever address their network gives them) and the health probe (says only "ok") are exempt.
    if (first !== "ready" && first !== "healthz") this.#o.allowedHosts.check(req);
    switch (first) {
      case "invoke":
        return this.#invoke(req, res, requestId, functionId(undefined, a), target.rest(2), target.query);
      case "f":
        if (method === "PUT") return this.#upload(req, res, functionId(a, b));
        allow(method, ["POST", "PUT"]);
        return this.#invoke(req, res, requestId, functionId(a, b), target.rest(3), target.query);
      case "fa":
        if (a === "calls" && method === "GET") return this.#async.result(res, b ?? "");
        allow(method, ["POST"]);
        return this.#async.submit(req, res, functionId(a, b), target.rest(3), target.query);
      case "async-function":
        // OpenFaaS's async route: a default-user function, then its path (as /invoke/<fn>/...).
        allow(method, ["POST"]);
        return this.#async.submit(req, res, functionId(undefined, a), target.rest(2), target.query);
      case "preBoot":
        allow(method, ["POST"]);
        return this.#preBoot(req, res, b ? functionId(a, b) : functionId(undefined, a));
      case "ready":
        allow(method, ["GET", "POST"]);
        req.resume();
        // An unknown id is answered "ok" too (as UniFaaS does), and only logged.
        if (!this.#o.hub.signal(a ?? "")) this.#o.log.debug("spurious readiness callback", { instance: a });
        res.writeHead(200, { "content-type": "text/plain", connection: "close" }).end("ok");
        return;
      case "stats":
        allow(method, ["GET"]);
        return sendJson(res, 200, await this.#statsDocument());
      case "metrics": {
        allow(method, ["GET"]);
        const text = await this.#o.metrics.registry.metrics();
        res.writeHead(200, { "content-type": this.#o.metrics.registry.contentType }).end(text);
        return;
      }
      case "healthz":
        allow(method, ["GET", "HEAD"]);
        res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
        return;
      case "s":
        // Faasm's per-user state: an admin route.
        refuseCrossSite(req, STATE_BODY);
        this.#authorize(req);
        return serveStateRoutes(req, res, target.segments, this.#o.store);
      case "system":
        if (a === "functions" || a === "function") return this.#admin(req, res, target);
        if (a === "nodes") return this.#nodes(req, res, target);
        // GET /system/calls[/<id>] lists records (call-routes.ts); these two act on the queue.
        if (
          a === "calls" &&
          b !== undefined &&
          target.segments.length === 4 &&
          target.segments[3] === "replay"
        ) {
          allow(method, ["POST"]);
          return this.#async.replay(req, res, b);
        }
        if (a === "calls" && b !== undefined && target.segments.length === 3 && method === "DELETE")
          return this.#async.remove(req, res, b);
        if ((a === "calls" || a === "logs") && method === "GET") {
          refuseCrossSite(req, JSON_BODY);
          this.#authorize(req);
          return serveCallRoutes(res, target.segments, target.query, this.#o.store);
        }
    }
    throw new FennecError(
      "NOT_FOUND",
      `no route for ${method} ${quoteForMessage("/" + target.segments.join("/"))}`,
    );
  }

  /**
   * The request body limit of function `id`: its `max-request-body`, else the gateway's; at once on
   * the warm path. A function whose config cannot be had gets the gateway's: its call then fails
   * with that error as usual.
   */
  #bodyLimitOf(id: FunctionId): number | Promise<number> {
    const limitOf = (config: FunctionConfig) => config.maxRequestBodyBytes ?? this.#o.bodyLimitBytes;
    const config = this.#o.scheduler.configOf(id);
    return config instanceof Promise ? config.then(limitOf, () => this.#o.bodyLimitBytes) : limitOf(config);
  }

  async #request(
    req: IncomingMessage,
    path: string,
    query: string,
    limit: number,
    callId: string,
    call?: CallHost,
  ): Promise<InvokeRequest> {
    const { body: pending, length } = requestBody(req, limit);
    const headers: Record<string, string> = {};
    const given = req.headers;
    for (const name in given) {
      const value = given[name];
      // `x-fennec-*` are Fennec's own (the chain depth, call-host.ts; a forwarded call's node,
      // placement and signature, forward-auth.ts): none reaches a function, from a client or a node.
      if (value === undefined || NOT_FORWARDED.has(name) || name.startsWith("x-fennec-")) continue;
      headers[name] = Array.isArray(value) ? value.join(", ") : value;
    }
    if (length !== undefined) headers["content-length"] = length;
    // The call's own id, as an async call's request has it (async-engine.ts): never a client's.
    headers[CALL_ID_HEADER] = callId;
    const body = pending instanceof Promise ? await pending : pending;
    return { method: req.method ?? "GET", path, query, headers, body, call };
  }

  async #invoke(
    req: IncomingMessage,
    res: ServerResponse,
    requestId: string,
    id: FunctionId,
    path: string,
    query: string,
  ): Promise<void> {
    // A client that goes away (closes its connection before the whole response is out) cancels
    // the call, queued or running: the sandbox's side is aborted, the body's stream destroyed.
    // Listened to before the limit is looked up, so leaving meanwhile cancels too.
    const cancel = new CallAbort();
    res.once("close", () => {
      if (!res.writableFinished) cancel.abort();
    });
    const invocations = this.#o.invocations;
    const router = this.#o.router;
    // In a cluster: a call forwarded here runs here (never forwarded twice) under the call id its
    // entry node gave it, once its signature shows a member sent it (else FORWARD_UNAUTHENTICATED);
    // a client's call goes where placement says, before its body is read. A single node has no
    // router: the forwarding headers mean nothing there (and never reach the function).
    const forwarded = router?.forwardedBy(req);
    const callId = forwarded?.callId ?? invocations.newCallId();
    // The platform's headers (#stamp) go out with a warm answer in one writeHead (sendWhole);
    // every other way out sets them first, in the same order.
    let stamped = false;
    try {
      if (router) {
        this.#stamp(res, requestId, callId);
        stamped = true;
        // A node that refuses the connection is left out from then on: the call is placed again
        // (its body is still unread), a few times at most, before it is served here.
        for (let tries = 0; !forwarded && tries < 3; tries++) {
          const placed = router.route(id);
          const route = placed instanceof Promise ? await placed : placed;
          if (!route) break;
          if (await this.#forward(req, res, id, route, callId, cancel)) return;
        }
      }
      const limit = this.#bodyLimitOf(id);
      const request = await this.#request(
        req,
        path,
        query,
        typeof limit === "number" ? limit : await limit,
        callId,
        invocations.callHost(callId, id.user),
      );
      const outcome = await invocations.invoke(callId, id, request, cancel, forwarded);
      if ("error" in outcome) throw outcome.error;
      const startType = outcome.start.startType;
      if (!stamped && req.complete) {
        const head = [REQUEST_ID_HEADER, requestId, NODE_HEADER, this.#o.node, CALL_ID_HEADER, callId];
        if (startType) head.push(START_HEADER, startType);
        if (sendWhole(res, outcome.response, head)) return;
      }
      if (!stamped) this.#stamp(res, requestId, callId);
      stamped = true;
      if (startType) res.setHeader(START_HEADER, startType);
      // The function answered before the client's body was all in: the rest is not read for it.
      if (!req.complete) closeAfterResponse(req, res);
      try {
        await sendResponse(res, outcome.response);
      } catch (err) {
        // After the first byte a failure can only cut the response (sendResponse did, and the
        // invocation record says why). Before it, the error is answered with its stable code,
        // without what the function had set.
        if (res.headersSent || res.destroyed) return void res.destroy();
        for (const name of res.getHeaderNames())
          if (name !== REQUEST_ID_HEADER && name !== CALL_ID_HEADER && name !== NODE_HEADER)
            res.removeHeader(name);
        res.strictContentLength = false;
        throw err;
      }
    } catch (err) {
      if (!stamped && !res.headersSent) this.#stamp(res, requestId, callId);
      throw err;
    }
  }

  /**
   * Streams a call to the node placement chose and its answer back (`x-fennec-node` and every
   * other header of the remote's answer pass through). The node that runs it records it; this one
   * records it only when that node was lost (NODE_LOST), as that one then wrote nothing. False
   * when the node could not be reached and the call may be placed again.
   */
  async #forward(
    req: IncomingMessage,
    res: ServerResponse,
    id: FunctionId,
    route: Route,
    callId: string,
    cancel: CallAbort,
  ): Promise<boolean> {
    const submittedAt = Date.now();
    const outcome = await this.#o.router!.forward(route, {
      req,
      res,
      url: req.url ?? "/",
      callId,
      requestId: String(res.getHeader(REQUEST_ID_HEADER) ?? ""),
      cancel,
    });
    const error = outcome.error;
    if (!error) return true;
    if (outcome.resendable) return false;
    if (error.code === "NODE_LOST")
      this.#o.invocations.recordLost(callId, functionKey(id), {
        node: route.node.name,
        placement: route.placement.reason,
        submittedAt,
        status: outcome.status,
        error,
      });
    // Before the remote's head the error is answered here with its code; after it, the response
    // was cut already.
    if (outcome.status === undefined) throw error;
    return true;
  }

  async #upload(req: IncomingMessage, res: ServerResponse, id: FunctionId): Promise<void> {
    refuseCrossSite(req, MODULE_BODY);
    this.#authorize(req);
    const bytes = await readBody(req, this.#o.uploadLimitBytes);
    // Checked in a scratch copy under the function's own memory limit, then swapped in whole.
    const check = deployCheck(
      this.#o.scheduler,
      this.#o.validateModule,
      `upload of ${functionKey(id)}`,
      this.#runsElsewhere,
    );
    const config = await this.#o.registry.uploadModule(id, bytes, defaultWasmToml, check);
    this.#o.scheduler.adopt(config);
    sendJson(res, 200, { function: config.key, revision: config.revision, bytes: bytes.byteLength });
  }

  async #preBoot(req: IncomingMessage, res: ServerResponse, id: FunctionId): Promise<void> {
    refuseCrossSite(req, NUMBER_BODY);
    const text = (await readBody(req, 64)).toString("utf8").trim();
    const count = Number(text);
    if (!/^\d+$/.test(text) || count < 1 || count > 10_000) {
      throw new FennecError(
        "BAD_REQUEST",
        `preBoot expects a body with a whole number of instances (1-10000), got ${JSON.stringify(text)}`,
      );
    }
    const result = await this.#o.scheduler.preBoot(id, count);
    sendJson(res, result.started > 0 || result.errors.length === 0 ? 200 : 500, {
      function: functionKey(id),
      requested: count,
      started: result.started,
      errors: result.errors.map((e) => ({ code: e.code, message: e.message })),
    });
  }

  async #statsDocument(): Promise<Record<string, unknown>> {
    const { scheduler, stats } = this.#o;
    const instances: Record<string, unknown> = {};
    for (const [key, pool] of scheduler.pools())
      instances[key] = { ...pool.counts(), queued: pool.queueLength };
    return {
      ...stats.thesis(),
      memory: { reservedMiB: scheduler.memoryUsedMiB, budgetMiB: scheduler.memoryBudgetMiB },
      instances,
      functions: stats.functions(),
      ...stats.asyncCalls(await this.#o.store.queueFigures()),
      ...(this.#o.backends ? { backends: this.#o.backends() } : {}),
    };
  }

  /** `GET /system/nodes[/<name>]`: the live nodes as this node sees them (admin, like /system/calls). */
  #nodes(req: IncomingMessage, res: ServerResponse, target: Target): void {
    allow(req.method ?? "GET", ["GET"]);
    refuseCrossSite(req, JSON_BODY);
    this.#authorize(req);
    const [, , name, extra] = target.segments;
    const nodes = this.#o.nodes();
    if (name === undefined || name === "") return sendJson(res, 200, nodes);
    const one = extra === undefined ? nodes.find((n) => n.name === name) : undefined;
    if (!one) throw new FennecError("NOT_FOUND", `no live node named ${quoteForMessage(name)}`);
    sendJson(res, 200, one);
  }

  async #admin(req: IncomingMessage, res: ServerResponse, target: Target): Promise<void> {
    refuseCrossSite(req, JSON_BODY);
    this.#authorize(req);
    const [, , a, b] = target.segments;
    const method = req.method ?? "GET";
    const named =
      a !== undefined && a !== ""
        ? b !== undefined
          ? functionId(a, b)
          : functionId(undefined, a)
        : undefined;
    if (method === "GET") {
      const all = await describeFunctions(this.#o.registry, this.#o.scheduler);
      if (!named) return sendJson(res, 200, all);
      const one = all.find((f) => f.name === named.name && f.user === named.user);
      if (!one) throw new FennecError("FUNCTION_NOT_FOUND", `function ${functionKey(named)} does not exist`);
      return sendJson(res, 200, one);
    }
    if (method === "POST" || method === "PUT") {
      const body = await readBody(req, this.#o.uploadLimitBytes);
      const config = await deployFromJson(
        body,
        named,
        this.#o.registry,
        this.#o.scheduler,
        this.#o.validateModule,
        this.#runsElsewhere,
      );
      // Calls from now on go to the new version; instances of the earlier one finish and retire.
      this.#o.scheduler.adopt(config);
      return sendJson(res, method === "POST" ? 201 : 200, {
        function: config.key,
        revision: config.revision,
      });
    }
    if (method === "DELETE") {
      let id = named;
      if (!id) {
        const body = JSON.parse((await readBody(req, 4096)).toString("utf8") || "{}") as {
          functionName?: unknown;
        };
        if (typeof body.functionName !== "string")
          throw new FennecError("BAD_REQUEST", 'DELETE /system/functions expects {"functionName": "..."}');
        const parts = body.functionName.split("/");
        id = parts.length === 2 ? functionId(parts[0], parts[1]) : functionId(undefined, body.functionName);
      }
      await this.#o.registry.remove(id);
      await this.#o.scheduler.removeFunction(functionKey(id));
      this.#o.stats.forget(functionKey(id));
      await this.#o.metrics.forget(functionKey(id));
      res.writeHead(202).end();
      return;
    }
    throw new FennecError("METHOD_NOT_ALLOWED", `${method} is not allowed on /system/functions`);
  }

  /** In a cluster: whether another live node has the sandbox `config` needs (a deploy is then taken here). */
  readonly #runsElsewhere = (config: FunctionConfig): boolean => {
    if (this.#o.router === undefined) return false;
    const needs = sandboxOf(config);
    return this.#o.nodes().some((n) => n.name !== this.#o.node && n.sandboxes.includes(needs));
  };

  #authorize(req: IncomingMessage): void {
    const token = this.#o.token;
    if (token === undefined) return;
    const given = /^Bearer (.+)$/i.exec(req.headers.authorization ?? "")?.[1] ?? "";
    const a = Buffer.from(given);
    const b = Buffer.from(token);
    if (a.length !== b.length || !timingSafeEqual(a, b)) {
      throw new FennecError(
        "UNAUTHORIZED",
        "this route needs the admin token: send Authorization: Bearer <token>",
      );
    }
  }
}

function allow(method: string, methods: string[]): void {
  if (!methods.includes(method))
    throw new FennecError("METHOD_NOT_ALLOWED", `${method} is not allowed here; use ${methods.join(" or ")}`);
}
