import { randomBytes } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { hostname } from "node:os";
import { join, resolve } from "node:path";
import { FennecError, toFennecError } from "./core/errors.js";
import { createLogger, type Logger, type LogLevel } from "./core/log.js";
import { AllowedHosts } from "./gateway/allowed-hosts.js";
import { STATUS_BY_CODE } from "./gateway/error-status.js";
import { Gateway } from "./gateway/server.js";
import { AsyncEngine } from "./invocations/async-engine.js";
import { CallbackPolicy } from "./invocations/callback-policy.js";
import { Callbacks, type CallbackOptions } from "./invocations/callbacks.js";
import { PrometheusMetrics } from "./metrics/prometheus.js";
import { StatsCollector } from "./metrics/stats.js";
import { clusterForwardKey } from "./cluster/cluster-secret.js";
import { connectCluster } from "./cluster/connection.js";
import { ForwardAuth } from "./cluster/forward-auth.js";
import type { ClusterAuthOptions } from "./cluster/nats-auth.js";
import type { ClusterView, NodeInfo } from "./cluster/contract.js";
import { FunctionShare } from "./cluster/function-share.js";
import { LocalNode } from "./cluster/local-node.js";
import { checkNodeName, Membership, type LocalState } from "./cluster/membership.js";
import { RendezvousPlacement } from "./cluster/placement.js";
import { checkReplicas, CLUSTER_STREAMS, prepareReplicas, replicaError } from "./cluster/replicas.js";
import { ClusterRouter } from "./cluster/router.js";
import { sandboxOf } from "./cluster/sandboxes.js";
import { startTakeover } from "./cluster/takeover.js";
import { moduleCheck } from "./gateway/admin.js";
import { DirectoryRegistry } from "./registry/registry.js";
import type { SandboxDriver } from "./sandbox/contract.js";
import type { FunctionConfig } from "./config/function-config.js";
import { sandboxKinds } from "./sandbox/drivers/index.js";
import { validateModuleBytes } from "./sandbox/drivers/wasm/module-cache.js";
import type { DriverSettings } from "./sandbox/kind.js";
import type { SandboxKinds } from "./sandbox/kinds.js";
import { ReadinessHub } from "./sandbox/readiness.js";
import { Scheduler } from "./scheduler/scheduler.js";
import { callHostFactory, chainDepthOf } from "./invocations/call-host.js";
import { Invocations, type CallHostFactory } from "./invocations/invocations.js";
import { sinkLogs } from "./invocations/log-sink.js";
import type { InvocationStore, RetentionPolicy } from "./store/contract.js";
import { DEFAULT_RETENTION, requeueOrphans, startRetention } from "./store/housekeeping.js";
import { openClusterStore, storeStreams } from "./store/jetstream/open.js";
import { openStore } from "./store/open-store.js";

export interface FennecOptions {
  readonly registry: string;
  readonly host?: string;
  /** 0 picks a free port. */
  readonly port?: number;
  readonly token?: string | undefined;
  /**
   * Host names the gateway answers to besides localhost, *.localhost, IP literals and `host`
   * (`.example.com`: the name and its subdomains; `*`: any). Other Host headers get 403
   * HOST_NOT_ALLOWED, which stops DNS-rebinding pages.
   */
  readonly allowedHosts?: readonly string[];
  readonly memoryBudgetMiB?: number;
  readonly bodyLimitBytes?: number;
  readonly uploadLimitBytes?: number;
  /** How long an instance may take to become ready. */
  readonly startTimeoutMs?: number;
  /** Directory of caches (compiled modules); default `<registry>/.fennec/cache`. */
  readonly cacheDir?: string;
  readonly logLevel?: LogLevel | "silent";
  /**
   * Each driver's settings by their command-line name, as its kind declares them (`fennec serve
   * --help`): `process: true` enables the `[process]` sandbox (off unless asked for: functions run
   * as plain host processes), `"docker-host"` is the Docker engine's socket, `"vm-accel"` ...
   */
  readonly driverSettings?: DriverSettings;
  /** The sandbox kinds (default: the registered ones, `src/sandbox/drivers/index.ts`; tests add one). */
  readonly kinds?: SandboxKinds;
  /** Extra or replacement drivers by sandbox kind (tests add a fake one). */
  readonly drivers?: ReadonlyMap<string, SandboxDriver>;
  /** Limits of the HTTP server against slow or greedy clients (defaults in SERVER_LIMITS). */
  readonly server?: ServerLimits;
  /** Where the invocation store keeps its database (`fennec.db`); default `<registry>/.fennec/state`. */
  readonly stateDir?: string;
  /** What the store's retention keeps (default 7 days, 1 GiB); runs at start and every minute. */
  readonly retention?: Partial<RetentionPolicy>;
  /** This node's name: in call records, `x-fennec-node` and the cluster (default: the host's name). */
  readonly node?: string;
  /**
   * Join a cluster: the NATS server (with JetStream) every node shares, `nats://HOST:PORT`
   * (comma-separated for several). Undefined: one node, the embedded store (docs/cluster.md).
   */
  readonly cluster?: string | undefined;
  /**
   * Copies of every bucket, stream and object store on the NATS cluster (`--cluster-replicas`,
   * 1–5): created with it, existing ones changed to it at start. Undefined: created with 1,
   * existing ones kept (docs/cluster.md, "A production topology").
   */
  readonly clusterReplicas?: number | undefined;
  /**
   * Credentials for the cluster's NATS server kept in files (`--cluster-creds`,
   * `--cluster-token-file`) and the CA of a `tls://` server (`--cluster-ca`); a user and password
   * or a token may also be in `cluster`'s URL (src/cluster/nats-auth.ts).
   */
  readonly clusterAuth?: ClusterAuthOptions | undefined;
  /**
   * The key that signs calls forwarded between nodes, instead of the one kept in NATS
   * (cluster-secret.ts): for a `clusterView` without NATS (tests). Default with `cluster`: NATS's.
   */
  readonly clusterKey?: Buffer | undefined;
  /**
   * The cluster's live nodes as this node sees them, instead of the membership kept over NATS
   * (`cluster`): calls are placed and forwarded by it. Tests pass a fake one.
   */
  readonly clusterView?: ClusterView | undefined;
  /**
   * The gateway's base URL as other nodes of the cluster reach it (`http://10.0.0.5:8123`);
   * default the address it listens on (`--host`, `--port`), which a wildcard host cannot be.
   */
  readonly advertise?: string | undefined;
  /**
   * False keeps no call records and no function logs (`fennec serve --no-records`); calls still
   * get their ids. Default true.
   */
  readonly records?: boolean;
  /** What a running call may ask of Fennec (chain, await, state); undefined: calls get none. */
  readonly makeCallHost?: CallHostFactory;
  /**
   * How long an async call's lease lasts (default 30 s; extended every third of it while the call
   * runs). A node that dies gives its calls back when its lease runs out, or, in a cluster, as soon
   * as the others see it leave (docs/cluster.md), whichever is first.
   */
  readonly asyncLeaseMs?: number;
  /** Largest response body an async call's result keeps (default 8 MiB); beyond, FN_RESPONSE_TOO_LARGE. */
  readonly asyncResultLimitBytes?: number;
  /**
   * Callbacks (`X-Callback-Url`): `allow` lists the hosts they may go to (`name`, `.name`, an IP
   * address, `*`); without it, any host whose addresses are public. Attempts, backoff and the
   * deadline of one attempt (defaults in Callbacks).
   */
  readonly callbacks?: CallbackOptions & { readonly allow?: readonly string[] };
}

/** Hosts that listen on every address: not one another node can be sent to. */
const WILDCARD = new Set(["0.0.0.0", "::", "[::]", "::0"]);

export interface ServerLimits {
  /** A client must send its whole request head within this long (slowloris). */
  readonly headersTimeoutMs?: number;
  /** ... and its whole request, body included, within this long (a slow upload). */
  readonly requestTimeoutMs?: number;
  /** An idle kept-alive connection is closed after this long. */
  readonly keepAliveTimeoutMs?: number;
  /** Connections open at once; more are refused (closed on accept) until some end. */
  readonly maxConnections?: number;
  /** Header lines read of one request; the rest are ignored. */
  readonly maxHeadersCount?: number;
}

const SERVER_LIMITS: Required<ServerLimits> = {
  headersTimeoutMs: 20_000,
  requestTimeoutMs: 300_000,
  keepAliveTimeoutMs: 65_000,
  maxConnections: 10_000,
  maxHeadersCount: 200,
};

/** The gateway's HTTP server, with every limit set rather than left to Node's defaults. */
function createGatewayServer(limits: ServerLimits, handle: Gateway["handle"]): Server {
  const l = { ...SERVER_LIMITS, ...limits };
  const server = createServer(
    {
      headersTimeout: l.headersTimeoutMs,
      requestTimeout: Math.max(l.requestTimeoutMs, l.headersTimeoutMs),
      keepAliveTimeout: l.keepAliveTimeoutMs,
      // Node checks the two timeouts above only this often (30 s by default).
      connectionsCheckingInterval: Math.min(1000, Math.max(50, l.headersTimeoutMs / 4)),
    },
    handle,
  );
  server.maxConnections = l.maxConnections;
  server.maxHeadersCount = l.maxHeadersCount;
  return server;
}

export interface Fennec {
  readonly url: string;
  readonly server: Server;
  readonly scheduler: Scheduler;
  readonly registry: DirectoryRegistry;
  /** The invocation store: async calls, call records, logs, state. */
  readonly store: InvocationStore;
  readonly log: Logger;
  /** This node's name (`--node`, default the host's). */
  readonly node: string;
  /** The live nodes of the cluster (`--cluster`); undefined on a node of its own. */
  readonly cluster: ClusterView | undefined;
  /** Stops accepting, drains in-flight calls (up to `graceMs`), stops every instance. Idempotent. */
  close(graceMs?: number): Promise<void>;
}

/** The composition root: picks defaults and wires registry, drivers, scheduler, metrics and gateway. */
export async function startFennec(options: FennecOptions): Promise<Fennec> {
  // What a start that fails half-way must close (the cluster's connection would otherwise keep
  // the process alive after its error).
  const opened: Array<() => Promise<unknown>> = [];
  try {
    return await startWith(options, opened);
  } catch (err) {
    for (const close of opened.reverse()) await close().catch(() => undefined);
    throw err;
  }
}

async function startWith(options: FennecOptions, opened: Array<() => Promise<unknown>>): Promise<Fennec> {
  const log = createLogger(options.logLevel ?? "info");
  const allowedHosts = new AllowedHosts(options.allowedHosts, options.host);
  const root = resolve(options.registry);
  // The host's name, made a valid node name (a host name may hold what a header or key cannot).
  const node =
    options.node ??
    (hostname()
      .replace(/[^A-Za-z0-9_.-]/g, "-")
      .replace(/\.{2,}/g, ".")
      .replace(/^\.+|\.+$/g, "")
      .slice(0, 253) ||
      "fennec");
  checkNodeName(node);
  if (options.advertise !== undefined && !/^https?:\/\/[^/\s]+$/.test(options.advertise))
    throw new FennecError(
      "BAD_REQUEST",
      `--advertise expects the gateway's base URL as other nodes reach it (http://HOST:PORT), got ${JSON.stringify(options.advertise)}`,
    );
  if (options.cluster && !options.advertise && WILDCARD.has(options.host ?? ""))
    throw new FennecError(
      "BAD_REQUEST",
      `--host ${options.host} listens on every address, which names none other nodes can reach: give --advertise http://HOST:PORT`,
    );
  if (options.clusterReplicas !== undefined) {
    if (!options.cluster)
      throw new FennecError(
        "CLUSTER_REPLICAS",
        "--cluster-replicas applies to a cluster: give --cluster too",
      );
    checkReplicas(options.clusterReplicas);
  }
  // First: an unreachable cluster, a damaged or busy store stop the start before anything else is touched.
  const nats = options.cluster
    ? await connectCluster(options.cluster, { node, log, auth: options.clusterAuth })
    : undefined;
  if (nats) opened.push(() => nats.close());
  // Replicas before anything is created: a count the NATS cluster cannot hold fails the start here.
  if (nats)
    await prepareReplicas(
      nats,
      [...CLUSTER_STREAMS, ...storeStreams("fennec")],
      options.clusterReplicas,
      log,
    );
  // The key forwarded calls are signed with: every member reads it from NATS (made by the first).
  const forwardKey =
    options.clusterKey ?? (nats ? await clusterForwardKey(nats, options.clusterReplicas) : undefined);
  // The name is claimed before anything else is opened: a second live node of that name is
  // refused (NODE_NAME_TAKEN) before it touches a store or serves. Its state is filled in below.
  let localState: () => LocalState = () => ({
    sandboxes: [],
    missing: {},
    memory: { budgetMiB: options.memoryBudgetMiB ?? 4096, reservedMiB: 0 },
    inFlight: 0,
    functions: {},
  });
  const membership = nats
    ? await Membership.join(nats, {
        name: node,
        log,
        local: () => localState(),
        replicas: options.clusterReplicas,
      }).catch(async (err: unknown) => {
        await nats.close().catch(() => undefined);
        throw replicaError(err, options.clusterReplicas, "the nodes bucket");
      })
    : undefined;
  if (membership) opened.push(() => membership.close());
  // A node that leaves has its running async calls and pending callbacks taken back by the live
  // ones at once, not when its leases run out (takeover.ts). Listening from here, so one that
  // leaves while this node starts is not missed; the engine is handed over once it runs.
  const takeover = membership ? startTakeover({ view: membership, log }) : undefined;
  const retentionPolicy = { ...DEFAULT_RETENTION, ...options.retention };
  // In a cluster every node shares one store in JetStream; alone, the embedded one.
  const store: InvocationStore & { readonly soleOwner: boolean } = nats
    ? await openClusterStore(nats, { log, retention: retentionPolicy, replicas: options.clusterReplicas })
    : openStore(options.stateDir ?? join(root, ".fennec", "state"), { log });
  const kinds = options.kinds ?? sandboxKinds;
  // A directory a deploy replaced stays until the scheduler has no instance read from it.
  const registry: DirectoryRegistry = new DirectoryRegistry(root, {
    loader: kinds.loader,
    revisionsInUse: (key: string): string[] => scheduler.revisionsInUse(key),
  });
  const { removed, restored } = await registry.cleanupStale();
  if (removed.length > 0) log.info("removed leftovers of an earlier run", { paths: removed });
  if (restored.length > 0)
    log.warn("a deploy was interrupted: the functions keep their previous version", { paths: restored });

  const cacheDir = options.cacheDir ?? join(root, ".fennec", "cache");
  // Each kind's driver loads its module (and the module's dependencies) only here.
  const own = await kinds.createDrivers({ settings: options.driverSettings ?? {}, cacheDir, log });
  const drivers = new Map([...own, ...(options.drivers ?? [])]);
  // The kinds' own hooks (status, prepared) apply to their own drivers, not to a test's stand-in.
  const kindDrivers = new Map([...own].filter(([kind, driver]) => drivers.get(kind) === driver));
  let entries = await registry.list();
  const served = new Set<string>(entries.flatMap((e) => (e.config ? [e.config.sandbox.kind] : [])));
  for (const [kind, driver] of drivers) {
    // A kind no function uses is swept only when it left traces: its driver's dependencies (the
    // Docker client) are not loaded for nothing.
    if (!served.has(kind) && kindDrivers.has(kind) && !(await kinds.hasLeftovers(kind))) continue;
    const report = await driver.cleanupStale?.().catch((err: unknown) => {
      log.warn(`${driver.name}: start-up cleanup failed`, { error: toFennecError(err).message });
      return undefined;
    });
    if (report?.removed.length)
      log.info(`${driver.name}: removed leftovers of a Fennec that is gone`, { paths: report.removed });
    for (const { path, reason } of report?.leftAlone ?? [])
      log.warn(`${driver.name}: left alone at start-up cleanup, not provably Fennec's own`, { path, reason });
  }

  const hub = new ReadinessHub();
  let callbackBase = "";
  const scheduler: Scheduler = new Scheduler({
    configs: registry,
    drivers,
    enableHint: (kind) => kinds.enableHint(kind),
    hub,
    callbackBase: () => callbackBase,
    memoryBudgetMiB: options.memoryBudgetMiB ?? 4096,
    startTimeoutMs: options.startTimeoutMs ?? 25_000,
    log,
    onInstanceStopped: () => void registry.releaseRetired(),
  });
  // What this node can run and carries: its entry in the cluster's list (membership.ts), and
  // /system/nodes of a node on its own.
  const localNode = await LocalNode.start({
    scheduler,
    drivers,
    enableHint: (kind) => kinds.enableHint(kind),
    log,
  });
  localState = () => localNode.state();
  const startedAt = Date.now();
  let advertised = "";
  const nodes = (): readonly NodeInfo[] =>
    membership?.nodes() ?? [
      {
        ...localNode.state(),
        name: node,
        incarnation: scheduler.node,
        url: advertised,
        startedAt,
        heartbeatAt: Date.now(),
      },
    ];
  // Alone on the file, every call still marked running belongs to a Fennec that died; shared with
  // a live one, those may be its calls: their leases give them back if it dies.
  const orphans = store.soleOwner ? await requeueOrphans(store) : 0;
  if (orphans > 0)
    log.info("calls that were running when Fennec stopped are queued again", { calls: orphans });
  const retention = startRetention(store, retentionPolicy, log);
  const callbacks = new Callbacks(
    new CallbackPolicy(options.callbacks?.allow),
    log,
    scheduler.node,
    options.callbacks,
  );
  const engine = new AsyncEngine({
    store,
    // In a cluster calls are leased under this process's incarnation, the id the other nodes see
    // leave (takeover.ts); alone, under the scheduler's id.
    node: membership?.incarnation ?? scheduler.node,
    ...(options.asyncLeaseMs !== undefined ? { leaseMs: options.asyncLeaseMs } : {}),
    scheduler,
    log,
    resultLimitBytes: options.asyncResultLimitBytes ?? 8 * 2 ** 20,
    callbacks,
    statusOf: (code) => STATUS_BY_CODE[code],
    // In a cluster a call this node cannot run is left to one that can; others' calls come in
    // without waking this engine, so it looks at the queue every second.
    ...(nats ? { shared: true, sweepMs: 1_000 } : {}),
    // A chained call runs with its own host, one level deeper than its parent (call-host.ts).
    callHost: (record, request) =>
      makeCallHost(
        record.id,
        record.function.slice(0, record.function.indexOf("/")),
        chainDepthOf(request.headers),
      ),
  });
  const records = options.records ?? true;
  // Chaining and state over the store, with the scheduler lending awaiting callers' slots; a
  // chained call wakes the engine that runs it.
  const makeCallHost = options.makeCallHost ?? callHostFactory(store, scheduler, {}, () => engine.wake());
  const invocations = new Invocations({
    scheduler,
    store,
    node,
    records,
    makeCallHost,
    log,
  });
  const stopLogs = records
    ? sinkLogs(store, (err) => log.warn("function log lines not kept", { error: toFennecError(err).message }))
    : () => undefined;
  const stats = new StatsCollector(scheduler.node);
  const metrics = new PrometheusMetrics(
    () =>
      [...scheduler.pools()].flatMap(([fn, pool]) =>
        Object.entries(pool.counts()).map(([state, count]) => ({ function: fn, state, count })),
      ),
    () => ({ reservedMiB: scheduler.memoryUsedMiB, budgetMiB: scheduler.memoryBudgetMiB }),
    scheduler.node,
  );
  metrics.watchQueues(() => store.queueFigures());
  // In a cluster, functions are shared: the node catches up with the cluster (and seeds it with
  // what -r DIR has) before it serves, then follows it (docs/cluster.md, "Functions across nodes").
  const share = nats
    ? await FunctionShare.start({
        nc: nats,
        node,
        registry,
        log,
        check: (what) => moduleCheck(validateModuleBytes, what),
        replicas: options.clusterReplicas,
        installed: (config) => scheduler.adopt(config),
        removed: async (key) => {
          await scheduler.removeFunction(key);
          stats.forget(key);
          await metrics.forget(key);
        },
      }).catch(async (err: unknown) => {
        await scheduler.close(0);
        stopLogs();
        await retention.stop();
        await store.close();
        localNode.close();
        await membership?.close();
        await nats.close().catch(() => undefined);
        throw replicaError(err, options.clusterReplicas, "the functions bucket");
      })
    : undefined;
  if (share) entries = await registry.list();
  // Only a node in a cluster places and forwards calls: a single node has no router at all.
  const view: ClusterView | undefined = options.clusterView ?? membership;
  const router = view
    ? new ClusterRouter({
        view,
        rule: new RendezvousPlacement(),
        configOf: (id) => scheduler.configOf(id),
        describe: (config) => placementOf(scheduler, config),
        log,
        // A view without NATS and without a key (a test's) signs with a key of its own: no other
        // node accepts its calls, and it accepts none.
        auth: new ForwardAuth(forwardKey ?? randomBytes(32)),
      })
    : undefined;
  const gateway = new Gateway({
    scheduler,
    registry,
    hub,
    stats,
    metrics,
    validateModule: validateModuleBytes,
    log,
    bodyLimitBytes: options.bodyLimitBytes ?? 8 * 2 ** 20,
    uploadLimitBytes: options.uploadLimitBytes ?? 64 * 2 ** 20,
    token: options.token,
    allowedHosts,
    backends: () => kinds.status(kindDrivers),
    store,
    invocations,
    engine,
    callbacks,
    router,
    node,
    nodes,
  });

  const server = createGatewayServer(options.server ?? {}, gateway.handle);
  await listen(server, options.port ?? 8123, options.host ?? "127.0.0.1").catch(async (err: unknown) => {
    // Nothing will be served: stop what was started (idle executor threads would keep the process alive).
    await share?.close();
    await scheduler.close(0);
    stopLogs();
    await retention.stop();
    await store.close();
    localNode.close();
    await membership?.close();
    await router?.close();
    await nats?.close().catch(() => undefined);
    throw err;
  });
  const address = server.address() as AddressInfo;
  const host = address.family === "IPv6" ? `[${address.address}]` : address.address;
  const url = `http://${host}:${address.port}`;
  callbackBase = `${url}/ready/`;
  // Other nodes reach this one at --advertise, else where it listens (a wildcard address says
  // nothing to another machine: --advertise is then required, checked at the top).
  advertised = options.advertise ?? url;
  await membership?.publish(advertised);
  // Calls this node was running when it died run again; then queued ones are taken.
  await engine.start();
  takeover?.ready(engine);
  // Callbacks a Fennec before this one had not delivered yet (alone on the file: shared with a
  // live one, they may be its deliveries under way; in a cluster the takeover sends them).
  const resumed = store.soleOwner ? await engine.resumeCallbacks() : 0;
  if (resumed > 0) log.info("callbacks pending when Fennec stopped are sent again", { callbacks: resumed });

  // Prepare every function now (compile modules, build roots and images), so the first cold start
  // is an instantiation, and start min-instances; both in the background, neither blocks serving.
  for (const entry of entries) {
    if (entry.error)
      log.warn("function is not servable", {
        function: entry.key,
        code: entry.error.code,
        error: entry.error.message,
      });
  }
  let closing: Promise<void> | undefined;
  const prepareAll = async (): Promise<void> => {
    for (const entry of entries) {
      if (closing) return;
      if (!entry.config) continue;
      const key = entry.key;
      let driver: SandboxDriver;
      try {
        driver = scheduler.driverFor(entry.config);
      } catch (err) {
        scheduler.noteError(key, toFennecError(err));
        continue;
      }
      await driver.prepare?.(entry.config).catch((err: unknown) => {
        const error = toFennecError(err);
        scheduler.noteError(key, error);
        log.warn("function is not servable", { function: key, code: error.code, error: error.message });
      });
    }
    if (closing) return;
    await kinds.prepared(kindDrivers).catch(() => undefined);
    const floors = entries.filter((e) => e.config && e.config.minInstances > 0).map((e) => e.id);
    await scheduler.ensureMinimums(floors);
  };
  const preparing = prepareAll();
  log.info(`Fennec serving ${entries.length} function(s) from ${root} on ${url}`);
  if (!options.token) {
    log.warn(
      `NO ADMIN TOKEN: anyone who can reach ${url} can deploy, replace and delete functions (and so run code on this host). Set --token or FENNEC_TOKEN, and keep the address on loopback unless a token is set.`,
    );
  }

  const close = (graceMs = 10_000): Promise<void> => {
    closing ??= (async () => {
      // Leave the cluster's list first: the other nodes stop sending calls here while this drains.
      takeover?.stop();
      await membership?.close();
      localNode.close();
      // Background preparation writes into the registry (built handlers): let it stop first.
      await preparing.catch(() => undefined);
      // No function installed or removed from here on.
      await share?.close();
      const serverClosed = new Promise<void>((r) => server.close(() => r()));
      server.closeIdleConnections();
      // Async calls: none taken from now on; those running finish within the drain, or go back
      // to the queue whole when it ends; queued ones stay queued for the next start.
      engine.stop();
      await scheduler.close(graceMs);
      await engine.drained();
      await callbacks.close();
      await registry.releaseRetired();
      server.closeAllConnections();
      await serverClosed;
      // Forwarded calls still running were cut with their client's connection above.
      await router?.close();
      stats.close();
      metrics.close();
      stopLogs();
      // Last: what the drained calls wrote (results, records, logs) is on disk before it closes.
      await retention.stop();
      await store.close();
      await nats?.drain().catch(() => undefined);
    })();
    return closing;
  };
  return { url, server, scheduler, registry, store, log, node, cluster: membership, close };
}

/**
 * What placement needs of a function: the sandbox it needs, named as nodes list theirs, and one
 * instance's memory by its driver's reckoning (the config's own figure on a node without that
 * driver: it is placed elsewhere anyway).
 */
function placementOf(scheduler: Scheduler, config: FunctionConfig): { sandbox: string; memoryMiB: number } {
  const sandbox = sandboxOf(config);
  try {
    return { sandbox, memoryMiB: scheduler.driverFor(config).memoryMiB(config) };
  } catch {
    const own = (config.sandbox as { memoryMiB?: unknown; memory?: unknown }).memoryMiB;
    return { sandbox, memoryMiB: typeof own === "number" ? own : 128 };
  }
}

/** Listens, or rejects with one clear line naming the address and the reason (a busy port, a bad host). */
function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise<void>((resolveListen, reject) => {
    const fail = (err: NodeJS.ErrnoException) => {
      const why =
        err.code === "EADDRINUSE"
          ? "the address is already in use (another program, or another Fennec, listens there)"
          : err.code === "EACCES"
            ? "permission denied (ports below 1024 need privileges)"
            : err.code === "EADDRNOTAVAIL" || err.code === "ENOTFOUND" || err.code === "EAI_AGAIN"
              ? "no such local address"
              : err.message;
      reject(new Error(`cannot listen on ${host}:${port}: ${why}${err.code ? ` (${err.code})` : ""}`));
    };
    server.once("error", fail);
    try {
      server.listen(port, host, () => {
        server.off("error", fail);
        resolveListen();
      });
    } catch (err) {
      // An out-of-range port is thrown, not emitted.
      fail(err as NodeJS.ErrnoException);
    }
  });
}
