import { spawn, type ChildProcess } from "node:child_process";
import { cp, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startNats, type TestNats } from "./nats.js";
import { CLI, EXAMPLES } from "./paths.js";
import { GENEROUS_MS, waitFor } from "./wait.js";

/**
 * A Fennec cluster of the test's own: one nats-server (JetStream, temp store, free port) and N
 * `fennec serve --cluster URL --node NAME --port 0` child processes, each with its own scratch
 * copy of a registry, its own --state-dir, FENNEC_RUN_DIR and cache, so nodes share nothing but
 * NATS, as on separate machines.
 */

/** How one node is started. */
export interface ClusterNodeSpec {
  readonly name: string;
  /** Extra `fennec serve` arguments (`--process`, `--memory 512`). */
  readonly args?: readonly string[];
  /** Extra environment. */
  readonly env?: Readonly<Record<string, string>>;
  /** The registry directory copied for this node (default: the cluster's `registry`). */
  readonly registry?: string;
}

/** What the nodes are given as `--cluster`: one test nats-server, or a NATS cluster's URLs (nats-cluster.ts). */
export interface NatsEndpoint {
  readonly url: string;
  stop(): Promise<void>;
}

export interface ClusterOptions<N extends NatsEndpoint = TestNats> {
  /** Node names (or specs); default three nodes `n1`, `n2`, `n3`. */
  readonly nodes?: ReadonlyArray<string | ClusterNodeSpec>;
  /**
   * The registry every node gets a copy of (default examples/registry: preparing all of it on
   * three nodes is slow on a busy machine; a test that needs one function passes a small one).
   */
  readonly registry?: string;
  /** The admin token every node requires (default a fixed test token; `null`: none). */
  readonly token?: string | null;
  /** Arguments every node gets (before its own). */
  readonly args?: readonly string[];
  /**
   * A nats-server, or a NATS cluster (`startNatsCluster()`), to use (not stopped by `stop()`);
   * default: one nats-server of the cluster's own.
   */
  readonly nats?: N;
  /** What nodes get as `--cluster` (credentials in it, say); default the server's plain URL. */
  readonly clusterUrl?: string;
  /**
   * Wait until every node lists all N in `GET /system/nodes` (default true); false returns once
   * each node serves (for a test of membership itself, or a branch without it).
   */
  readonly waitForMembership?: boolean;
}

/** One running (or stopped) node. */
export interface ClusterNode {
  readonly name: string;
  /** Its gateway's URL (changes across restarts: `--port 0`). */
  readonly url: string;
  readonly dir: string;
  readonly registry: string;
  readonly stateDir: string;
  readonly runDir: string;
  /** The PID of its current process (undefined before its first start). */
  readonly pid: number | undefined;
  /** Whether its process is running (a SIGSTOPped one counts as running). */
  readonly running: boolean;
  /** Its stderr and stdout so far, every start included. */
  log(): string;
}

export interface TestCluster<N extends NatsEndpoint = TestNats> {
  readonly nats: N;
  /** The admin token, or undefined. */
  readonly token: string | undefined;
  /** `{ authorization: "Bearer ..." }` (empty without a token): for admin routes. */
  readonly headers: Readonly<Record<string, string>>;
  readonly names: readonly string[];
  node(name: string): ClusterNode;
  /** The URL of node `name` (throws for an unknown name). */
  url(name: string): string;
  /**
   * Sends `signal` to node `name`'s process (default SIGKILL). SIGKILL, SIGTERM and SIGINT wait
   * until it has exited; SIGSTOP and SIGCONT return at once (a partition, and its end).
   */
  kill(name: string, signal?: NodeJS.Signals): Promise<void>;
  /** Stops node `name` if it runs (SIGTERM, then SIGKILL), starts it again with the same directories. */
  restart(name: string, opts?: { readonly waitForMembership?: boolean }): Promise<void>;
  /** `GET /system/nodes` of node `name`: the names it sees, sorted. */
  members(name: string): Promise<string[]>;
  /** Waits until every running node sees exactly `names` (default: the running nodes). */
  waitForMembers(names?: readonly string[], timeoutMs?: number): Promise<void>;
  /** Stops every node and the cluster's own nats-server, removes every directory. Idempotent. */
  stop(): Promise<void>;
  /** Every node's log tail, for a failure message. */
  logs(): string;
}

const DEFAULT_TOKEN = "cluster-test-token";

interface NodeState {
  readonly spec: ClusterNodeSpec;
  readonly dir: string;
  readonly registry: string;
  readonly stateDir: string;
  readonly runDir: string;
  readonly cacheDir: string;
  child: ChildProcess | undefined;
  exited: Promise<void>;
  url: string;
  log: string;
}

const alive = (c: ChildProcess | undefined): c is ChildProcess =>
  c !== undefined && c.exitCode === null && c.signalCode === null;

/** Starts a nats-server (unless given) and the nodes; resolves once each serves and sees the others. */
export async function startCluster<N extends NatsEndpoint = TestNats>(
  options: ClusterOptions<N> = {},
): Promise<TestCluster<N>> {
  const specs: ClusterNodeSpec[] = (options.nodes ?? ["n1", "n2", "n3"]).map((n) =>
    typeof n === "string" ? { name: n } : n,
  );
  const token = options.token === null ? undefined : (options.token ?? DEFAULT_TOKEN);
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const ownNats = options.nats === undefined;
  // Without one given, N is the default TestNats.
  const nats = options.nats ?? ((await startNats()) as unknown as N);
  const root = await mkdtemp(join(tmpdir(), "fennec-cluster-"));
  const nodes = new Map<string, NodeState>();
  let stopped = false;

  const start = async (state: NodeState): Promise<void> => {
    const args = [
      CLI,
      "serve",
      "-r",
      state.registry,
      "--port",
      "0",
      "--cluster",
      options.clusterUrl ?? nats.url,
      "--node",
      state.spec.name,
      "--state-dir",
      state.stateDir,
      "--cache-dir",
      state.cacheDir,
      ...(token ? ["--token", token] : []),
      ...(options.args ?? []),
      ...(state.spec.args ?? []),
    ];
    const { FENNEC_TOKEN: _t, FENNEC_URL: _u, ...inherited } = process.env;
    const child = spawn(process.execPath, args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...inherited, FENNEC_RUN_DIR: state.runDir, ...state.spec.env },
    });
    state.child = child;
    state.url = "";
    state.exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    let served: () => void = () => undefined;
    // Only this start's lines: an earlier start's log names its own (old) URL.
    const from = state.log.length;
    const append = (d: Buffer) => {
      state.log += d.toString();
      // The line Fennec logs once it serves names its URL.
      if (!state.url) {
        const m = /Fennec serving .* on (http:\/\/[^\s]+)/.exec(state.log.slice(from));
        if (m) {
          state.url = m[1]!;
          served();
        }
      }
    };
    child.stdout.on("data", append);
    child.stderr.on("data", append);
    // Either it serves, or it exits (a start-up error: fail at once with its log), or it hangs.
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new Error(`node ${state.spec.name} did not serve within ${GENEROUS_MS} ms:\n${tail(state.log)}`),
        );
      }, GENEROUS_MS);
      const onExit = (code: number | null, signal: string | null) => {
        clearTimeout(timer);
        reject(new Error(`node ${state.spec.name} exited at start (${code ?? signal}):\n${tail(state.log)}`));
      };
      served = () => {
        clearTimeout(timer);
        child.off("exit", onExit);
        resolve();
      };
      child.once("exit", onExit);
    });
  };

  const halt = async (state: NodeState, signal: NodeJS.Signals): Promise<void> => {
    const c = state.child;
    if (!alive(c)) return;
    // A stopped process does not act on SIGTERM until it runs again.
    c.kill("SIGCONT");
    c.kill(signal);
    const timer = setTimeout(() => c.kill("SIGKILL"), 20_000);
    await state.exited;
    clearTimeout(timer);
  };

  const state = (name: string): NodeState => {
    const s = nodes.get(name);
    if (!s)
      throw new Error(`no node ${JSON.stringify(name)} in this cluster (${[...nodes.keys()].join(", ")})`);
    return s;
  };

  const members = async (name: string): Promise<string[]> => {
    const res = await fetch(new URL("/system/nodes", state(name).url), {
      headers,
      signal: AbortSignal.timeout(10_000),
    });
    if (!res.ok) throw new Error(`GET /system/nodes on ${name}: HTTP ${res.status} ${await res.text()}`);
    const list = (await res.json()) as Array<{ name: string }>;
    return list.map((n) => n.name).sort();
  };

  const running = () => [...nodes.values()].filter((s) => alive(s.child)).map((s) => s.spec.name);

  const waitForMembers = async (names?: readonly string[], timeoutMs = GENEROUS_MS): Promise<void> => {
    const want = [...(names ?? running())].sort().join(",");
    for (const name of running()) {
      await waitFor(
        `node ${name} to see exactly [${want}]`,
        async () => (await members(name)).join(",") === want,
        { timeoutMs, intervalMs: 200 },
      );
    }
  };

  const cluster: TestCluster<N> = {
    nats,
    token,
    headers,
    names: specs.map((s) => s.name),
    node(name) {
      const s = state(name);
      return {
        name,
        get url() {
          return s.url;
        },
        dir: s.dir,
        registry: s.registry,
        stateDir: s.stateDir,
        runDir: s.runDir,
        get pid() {
          return s.child?.pid;
        },
        get running() {
          return alive(s.child);
        },
        log: () => s.log,
      };
    },
    url: (name) => state(name).url,
    async kill(name, signal = "SIGKILL") {
      const s = state(name);
      if (!alive(s.child)) return;
      if (signal === "SIGKILL" || signal === "SIGTERM" || signal === "SIGINT") return halt(s, signal);
      s.child.kill(signal);
    },
    async restart(name, opts = {}) {
      const s = state(name);
      await halt(s, "SIGTERM");
      await start(s);
      if (opts.waitForMembership ?? options.waitForMembership ?? true) await waitForMembers();
    },
    members,
    waitForMembers,
    logs: () => [...nodes.values()].map((s) => `--- node ${s.spec.name} ---\n${tail(s.log)}`).join("\n"),
    async stop() {
      if (stopped) return;
      stopped = true;
      await Promise.all([...nodes.values()].map((s) => halt(s, "SIGTERM")));
      if (ownNats) await nats.stop();
      await rm(root, { recursive: true, force: true });
    },
  };

  try {
    const seen = new Set<string>();
    for (const spec of specs) {
      if (seen.has(spec.name)) throw new Error(`two nodes named ${spec.name} in one test cluster`);
      seen.add(spec.name);
      const dir = join(root, spec.name);
      const registry = join(dir, "registry");
      await cp(spec.registry ?? options.registry ?? EXAMPLES, registry, {
        recursive: true,
        filter: (src) => !src.includes(".fennec"),
      });
      const s: NodeState = {
        spec,
        dir,
        registry,
        stateDir: join(dir, "state"),
        runDir: join(dir, "run"),
        cacheDir: join(dir, "cache"),
        child: undefined,
        exited: Promise.resolve(),
        url: "",
        log: "",
      };
      await mkdir(s.runDir, { recursive: true, mode: 0o700 });
      nodes.set(spec.name, s);
    }
    // One at a time: a node's start compiles its functions, and two cores are shared.
    for (const s of nodes.values()) await start(s);
    if (options.waitForMembership ?? true) await waitForMembers();
  } catch (err) {
    const logs = cluster.logs();
    await cluster.stop();
    throw new Error(`${(err as Error).message}\n${logs}`);
  }
  return cluster;
}

function tail(text: string, chars = 3000): string {
  return text.length > chars ? `...${text.slice(-chars)}` : text;
}
