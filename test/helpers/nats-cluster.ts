import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, openSync, readdirSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { findExecutable } from "../../src/sandbox/host-view.js";
import { alive } from "./nats.js";
import { GENEROUS_MS, waitFor } from "./wait.js";

/**
 * A NATS cluster of the test's own: three (or N) nats-servers on loopback joined by routes, each
 * with JetStream and file storage in a temp directory, as docs/cluster.md's production topology
 * has them. A JetStream cluster needs `server_name`, a `cluster { name, listen, routes }` block and
 * a `jetstream { store_dir }` per server: each server gets a config file of its own.
 */

const PREFIX = "fennec-natsc-";

/** One server of the cluster. */
export interface TestNatsServer {
  /** Its `server_name` (`s1`, `s2`, ...): what JetStream's stream info names as leader and peers. */
  readonly name: string;
  /** `nats://127.0.0.1:PORT`: the same across restarts. */
  readonly url: string;
  readonly running: boolean;
  /** SIGKILL, store kept: a crash (or a host losing power). `start()` brings it back. */
  kill(): Promise<void>;
  /** Starts it again on its ports and store; resolves once it answers JetStream requests. */
  start(): Promise<void>;
  /** The names of the client connections it holds (its monitoring port's /connz). */
  connections(): Promise<string[]>;
  log(): string;
}

export interface TestNatsCluster {
  /** Every server's client URL, comma-separated: what `fennec serve --cluster` takes. */
  readonly url: string;
  readonly servers: readonly TestNatsServer[];
  /** The server of that `server_name` (throws for another). */
  server(name: string): TestNatsServer;
  /** A client connection to the running servers (closed by the caller). */
  client(): Promise<NatsConnection>;
  /** Stops every server and removes every directory. Idempotent. */
  stop(): Promise<void>;
  log(): string;
}

/** Removes the directories of test clusters none of whose servers runs (a test run that crashed). */
function sweepStale(): void {
  for (const name of readdirSync(tmpdir()).filter((n) => n.startsWith(PREFIX))) {
    const root = join(tmpdir(), name);
    const pids = readdirSync(root, { withFileTypes: true })
      .filter((d) => d.isDirectory())
      .map((d) => join(root, d.name, "pid"))
      .filter((f) => existsSync(f))
      .map((f) => Number(readFileSync(f, "utf8")));
    if (pids.some((pid) => Number.isInteger(pid) && alive(pid))) continue;
    void rm(root, { recursive: true, force: true });
  }
}

/**
 * Free loopback ports for the routes, all held at once so they differ (the kernel picks them;
 * they are closed just before the servers bind them: a small window another process could take
 * one in, which a start then reports).
 */
async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<ReturnType<typeof createServer>>((resolve, reject) => {
          const s = createServer();
          s.once("error", reject);
          s.listen(0, "127.0.0.1", () => resolve(s));
        }),
    ),
  );
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

/** Asks a running server for JetStream's account info: answered once a meta leader is elected. */
async function jetStreamAnswers(url: string): Promise<boolean> {
  const nc = await connect({ servers: url, timeout: 2_000, maxReconnectAttempts: 0 });
  try {
    await (await jetstreamManager(nc, { timeout: 2_000 })).getAccountInfo();
    return true;
  } finally {
    await nc.close();
  }
}

/**
 * Starts `size` (default 3) nats-servers in one NATS cluster with JetStream, and resolves once
 * JetStream's meta leader is elected and every server is a peer: a stream of `size` replicas can
 * be created (a probe stream is created and deleted to prove it), not after a fixed sleep.
 */
export async function startNatsCluster(size = 3): Promise<TestNatsCluster> {
  sweepStale();
  const bin = findExecutable("nats-server", "nats-server");
  const root = await mkdtemp(join(tmpdir(), PREFIX));
  const routePorts = await freePorts(size);
  let stopped = false;

  interface State {
    readonly name: string;
    readonly dir: string;
    readonly routePort: number;
    /** The client port: -1 until the first start has taken one (then kept across restarts). */
    port: number;
    monitorPort: number;
    child: ChildProcess | undefined;
    exited: Promise<void>;
  }
  const states: State[] = [];
  for (let i = 0; i < size; i++) {
    const name = `s${i + 1}`;
    const dir = join(root, name);
    await mkdir(dir);
    states.push({
      name,
      dir,
      routePort: routePorts[i]!,
      port: -1,
      monitorPort: -1,
      child: undefined,
      exited: Promise.resolve(),
    });
  }
  const logOf = (s: State) => {
    const path = join(s.dir, "nats.log");
    return existsSync(path) ? readFileSync(path, "utf8").slice(-3000) : "";
  };
  const running = (s: State) =>
    s.child !== undefined && s.child.exitCode === null && s.child.signalCode === null;

  const config = (s: State) =>
    [
      `server_name: ${s.name}`,
      `listen: "127.0.0.1:${s.port}"`,
      `http: "127.0.0.1:${s.monitorPort}"`,
      `pid_file: "${join(s.dir, "pid")}"`,
      `ports_file_dir: "${s.dir}"`,
      `jetstream { store_dir: "${join(s.dir, "store")}" }`,
      `cluster {`,
      `  name: fennec-test`,
      `  listen: "127.0.0.1:${s.routePort}"`,
      `  routes: [${states
        .filter((o) => o !== s)
        .map((o) => `"nats-route://127.0.0.1:${o.routePort}"`)
        .join(", ")}]`,
      `}`,
    ].join("\n");

  /** Starts the process and waits until it has written its ports (the first start picks them). */
  const launch = async (s: State): Promise<void> => {
    const conf = join(s.dir, "nats.conf");
    await writeFile(conf, config(s));
    for (const f of readdirSync(s.dir).filter((n) => n.endsWith(".ports"))) await rm(join(s.dir, f));
    const logFd = openSync(join(s.dir, "nats.log"), "a");
    const c = spawn(bin, ["-c", conf], { stdio: ["ignore", "ignore", logFd] });
    closeSync(logFd);
    s.child = c;
    s.exited = new Promise<void>((resolve) => c.once("exit", () => resolve()));
    await waitFor(`nats-server ${s.name} to write its ports`, async () => {
      if (c.exitCode !== null) throw new Error(`nats-server ${s.name} exited at start:\n${logOf(s)}`);
      const file = readdirSync(s.dir).find((n) => n.endsWith(".ports"));
      if (!file) return false;
      const ports = JSON.parse(await readFile(join(s.dir, file), "utf8")) as {
        nats: string[];
        monitoring: string[];
      };
      s.port = Number(new URL(ports.nats[0] ?? "").port);
      s.monitorPort = Number(new URL(ports.monitoring[0] ?? "").port);
      return true;
    }).catch((err: unknown) => {
      if (c.exitCode !== null) throw new Error(`nats-server ${s.name} exited at start:\n${logOf(s)}`);
      throw err;
    });
  };

  const url = (s: State) => `nats://127.0.0.1:${s.port}`;
  const ready = (s: State) =>
    waitFor(
      `nats-server ${s.name} to answer JetStream requests (a meta leader elected)`,
      async () => {
        if (!running(s)) throw new Error(`nats-server ${s.name} exited:\n${logOf(s)}`);
        return jetStreamAnswers(url(s));
      },
      { timeoutMs: GENEROUS_MS, intervalMs: 100 },
    );

  const halt = async (s: State, signal: NodeJS.Signals): Promise<void> => {
    const c = s.child;
    if (!c || !running(s)) return;
    c.kill(signal);
    const timer = setTimeout(() => c.kill("SIGKILL"), 15_000);
    await s.exited;
    clearTimeout(timer);
  };

  const client = () =>
    connect({ servers: states.filter(running).map(url), timeout: 5_000, maxReconnectAttempts: -1 });

  const cluster: TestNatsCluster = {
    get url() {
      return states.map(url).join(",");
    },
    servers: states.map((s) => ({
      name: s.name,
      get url() {
        return url(s);
      },
      get running() {
        return running(s);
      },
      kill: () => halt(s, "SIGKILL"),
      start: async () => {
        if (running(s)) return;
        await launch(s);
        await ready(s);
      },
      connections: async () => {
        const res = await fetch(`http://127.0.0.1:${s.monitorPort}/connz?limit=1024`, {
          signal: AbortSignal.timeout(5_000),
        });
        const body = (await res.json()) as { connections?: Array<{ name?: string }> };
        return (body.connections ?? []).map((c) => c.name ?? "");
      },
      log: () => logOf(s),
    })),
    server(name) {
      const found = cluster.servers.find((s) => s.name === name);
      if (!found) throw new Error(`no nats-server named ${JSON.stringify(name)} in this cluster`);
      return found;
    },
    client,
    log: () => states.map((s) => `--- nats-server ${s.name} ---\n${logOf(s)}`).join("\n"),
    async stop() {
      if (stopped) return;
      stopped = true;
      await Promise.all(states.map((s) => halt(s, "SIGTERM")));
      await rm(root, { recursive: true, force: true });
    },
  };

  try {
    // All at once: each waits for the others' routes before JetStream elects a meta leader.
    await Promise.all(states.map(launch));
    await Promise.all(states.map(ready));
    // Every server a JetStream peer: a stream with one replica on each can be placed.
    const nc = await client();
    try {
      const jsm = await jetstreamManager(nc);
      const probe = `fennec-probe-${process.pid}`;
      await waitFor(
        `a stream of ${size} replicas to be placed (every server a JetStream peer)`,
        async () => {
          await jsm.streams.add({ name: probe, subjects: [`${probe}.>`], num_replicas: size });
          return true;
        },
        { timeoutMs: GENEROUS_MS, intervalMs: 200 },
      );
      await jsm.streams.delete(probe);
    } finally {
      await nc.close();
    }
  } catch (err) {
    const log = cluster.log();
    await cluster.stop();
    throw new Error(`${(err as Error).message}\n${log}`);
  }
  return cluster;
}
