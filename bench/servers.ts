/**
 * Servers the benchmarks put side by side, each started as a child of the benchmark and stopped by
 * its PID: `fennec serve`, workerd serving a handler module, and the bare node:http echo. A server
 * that does not come up is stopped before the error is thrown, so a failed row leaves nothing behind.
 */
import { fork, spawn, type ChildProcess } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { createServer, type AddressInfo } from "node:net";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import workerd, { compatibilityDate } from "workerd";
import { fennecUrl } from "./fennec-url.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
/** How long a server may take to answer its first call (a `[process]` build, an `[oci]` root). */
const START_DEADLINE_MS = 180_000;

/** A server under test. `pid` is the process whose own CPU and memory are the hop's cost. */
export interface Server {
  readonly url: string;
  readonly pid: number;
  stop(): Promise<void>;
}

/** A loopback port nothing listens on right now. */
export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

/** Stops a child: SIGTERM, then SIGKILL if it is still there after `graceMs`. */
export function stopChild(child: ChildProcess, graceMs = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill("SIGTERM");
  });
}

/** Keeps the last bytes a child wrote to stderr, for the error when it does not come up. */
export function tail(child: ChildProcess): () => string {
  let text = "";
  child.stderr?.on("data", (d: Buffer) => (text = (text + d.toString()).slice(-4000)));
  return () => text;
}

/** `starting`'s server, or, when it fails, `child` stopped and the error thrown. */
export async function orStop<T>(child: ChildProcess, starting: Promise<T>, graceMs?: number): Promise<T> {
  try {
    return await starting;
  } catch (err) {
    await stopChild(child, graceMs);
    throw err;
  }
}

/** A child just spawned to serve on loopback `port`, once it answers there. */
export function serving(child: ChildProcess, port: number): Promise<Server> {
  const log = tail(child);
  const url = `http://127.0.0.1:${port}/`;
  return orStop(
    child,
    waitForUrl(url, child, log).then(() => ({ url, pid: child.pid!, stop: () => stopChild(child) })),
  );
}

/** Polls `url` until it answers 2xx (the first call may start an instance or build a root). */
export async function waitForUrl(url: string, child?: ChildProcess, log = () => ""): Promise<void> {
  const deadline = performance.now() + START_DEADLINE_MS;
  for (;;) {
    if (child && (child.exitCode !== null || child.signalCode !== null))
      throw new Error(`${url}: the server exited (${child.exitCode ?? child.signalCode}): ${log()}`);
    const ok = await fetch(url, { method: "POST", body: "warm-up" }).then(
      async (r) => (await r.arrayBuffer(), r.ok),
      () => false,
    );
    if (ok) return;
    if (performance.now() > deadline) throw new Error(`${url} never answered: ${log()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Rejects after `ms` with `what` in the message, unless `p` settles first. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms / 1000} s`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/**
 * `fennec serve` on `registry` with the [process] sandbox enabled; `url` is its base address.
 * `checkout` is the Fennec whose build runs (default: this one; another worktree compares builds).
 */
export async function startFennec(
  registry: string,
  extraArgs: readonly string[] = [],
  nodeArgs: readonly string[] = [],
  checkout = ROOT,
): Promise<Server> {
  const cli = join(checkout, "dist/src/cli/main.js");
  const child = spawn(
    process.execPath,
    [
      ...nodeArgs,
      cli,
      "serve",
      "-r",
      registry,
      "--port",
      "0",
      "--process",
      "--start-timeout",
      String(START_DEADLINE_MS),
      ...extraArgs,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const log = tail(child);
  const url = await orStop(
    child,
    within(fennecUrl(child), START_DEADLINE_MS, "fennec serve").catch((err: unknown) => {
      throw new Error(`fennec serve did not start: ${String(err)} ${log()}`);
    }),
    30_000,
  );
  return { url, pid: child.pid!, stop: () => stopChild(child, 30_000) };
}

/** workerd serving `handler` (an ES module) as the only worker of a config written next to it. */
export async function startWorkerd(handler: string): Promise<Server> {
  const dir = dirname(handler);
  const port = await freePort();
  const name = basename(handler);
  await writeFile(
    join(dir, "workerd.capnp"),
    `using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [ (name = "main", worker = .handler) ],
  sockets = [ (name = "http", address = "127.0.0.1:${port}", http = (), service = "main") ],
);
const handler :Workerd.Worker = (
  modules = [ (name = "${name}", esModule = embed "${name}") ],
  compatibilityDate = "${compatibilityDate}",
);
`,
  );
  const child = spawn(workerd.default, ["serve", join(dir, "workerd.capnp")], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  return serving(child, port);
}

/** The bare node:http echo (bare-server.ts), the limit for any server on Node's HTTP stack. */
export async function startBare(): Promise<Server> {
  const child = fork(join(ROOT, "dist/bench/bare-server.js"), { stdio: ["ignore", "ignore", "pipe", "ipc"] });
  const log = tail(child);
  const port = await orStop(
    child,
    within(
      new Promise<number>((resolve, reject) => {
        child.once("message", (m) => resolve((m as { port: number }).port));
        child.once("exit", (code) => reject(new Error(`the bare server exited (${code}): ${log()}`)));
      }),
      30_000,
      "the bare node:http server",
    ),
  );
  const url = `http://127.0.0.1:${port}/`;
  await orStop(child, waitForUrl(url, child, log));
  return { url, pid: child.pid!, stop: () => stopChild(child) };
}

/** The servers a benchmark started, stopped newest first (all at its end, or a phase's early). */
export class Servers {
  readonly #started: Server[] = [];

  /** Waits for a server that is starting and keeps it, to be stopped with the others. */
  async start<T extends Server>(starting: Promise<T>): Promise<T> {
    const server = await starting;
    this.#started.push(server);
    return server;
  }

  async stopAll(): Promise<void> {
    for (const s of this.#started.splice(0).reverse()) await s.stop();
  }
}

/**
 * Writes function `name` into `registry`: `handler.mjs` from `source`, and a function.toml with
 * one warm instance taking `concurrency` calls at once, `top` (more top-level keys) and `table`.
 */
export async function writeFunction(
  registry: string,
  name: string,
  source: string,
  o: { readonly table: string; readonly concurrency: number; readonly top?: string },
): Promise<void> {
  await mkdir(join(registry, name), { recursive: true });
  await writeFile(join(registry, name, "handler.mjs"), source);
  await writeFile(
    join(registry, name, "function.toml"),
    `keepalive = 3600\nconcurrent-requests = ${o.concurrency}\nmax-instances = 1\n${o.top ?? ""}\n${o.table}\n`,
  );
}
