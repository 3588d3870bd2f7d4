/**
 * The servers the warm-hop and streaming benchmarks put side by side, each started as a child of
 * the benchmark and stopped by its PID: Fennec's handler runtime alone on a loopback port, nginx
 * proxying to it, a bare Node proxy, `fennec serve`, and workerd serving the same handler module.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { chmod, mkdir, writeFile } from "node:fs/promises";
import { createServer, type AddressInfo } from "node:net";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import workerd, { compatibilityDate } from "workerd";
import { HANDLER_RUNTIME } from "../src/sandbox/handler-build.js";
import { fennecUrl } from "./fennec-url.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));

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
function stopChild(child: ChildProcess, graceMs = 10_000): Promise<void> {
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
function tail(child: ChildProcess): () => string {
  let text = "";
  child.stderr?.on("data", (d: Buffer) => (text = (text + d.toString()).slice(-4000)));
  return () => text;
}

/** A child just spawned to serve on loopback `port`, once it answers there. */
async function serving(child: ChildProcess, port: number): Promise<Server> {
  const log = tail(child);
  const url = `http://127.0.0.1:${port}/`;
  await waitForUrl(url, child, log);
  return { url, pid: child.pid!, stop: () => stopChild(child) };
}

/** Polls `url` until it answers 2xx (the first call may start an instance or build a root). */
export async function waitForUrl(url: string, child?: ChildProcess, log = () => ""): Promise<void> {
  const deadline = performance.now() + 180_000;
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

/**
 * Fennec's handler runtime (this checkout's, or `runtime`) serving `handler` (an ES module) on a
 * loopback port, no Fennec.
 */
export async function startRuntime(
  handler: string,
  runtime = HANDLER_RUNTIME,
): Promise<Server & { port: number }> {
  const port = await freePort();
  const child = spawn(process.execPath, [runtime, handler, "ignore"], {
    env: { ...process.env, PORT: String(port) },
    stdio: ["ignore", "ignore", "pipe"],
  });
  return { ...(await serving(child, port)), port };
}

/** The bare Node reverse proxy (node-proxy.ts) in front of `upstreamPort`. */
export async function startNodeProxy(upstreamPort: number): Promise<Server> {
  const child = spawn(process.execPath, [join(ROOT, "dist/bench/node-proxy.js"), String(upstreamPort)], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const log = tail(child);
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.once("data", (d: Buffer) => resolve(Number(d.toString().trim())));
    child.once("exit", (code) => reject(new Error(`the Node proxy exited (${code}): ${log()}`)));
  });
  const url = `http://127.0.0.1:${port}/`;
  await waitForUrl(url, child, log);
  return { url, pid: child.pid!, stop: () => stopChild(child) };
}

/**
 * nginx from Debian as a reverse proxy to `upstreamPort`, configured as a proxy in front of an
 * application server usually is: HTTP/1.1 to the upstream with a pool of kept-alive connections,
 * no access log, and `worker_processes` as given (Fennec's gateway is one event loop).
 */
export async function startNginx(
  dir: string,
  upstreamPort: number,
  workers: number | "auto",
): Promise<Server> {
  await mkdir(join(dir, "tmp"), { recursive: true });
  await chmod(join(dir, "tmp"), 0o777); // the workers run as nobody
  const port = await freePort();
  const conf = `daemon off;
worker_processes ${workers};
pid ${join(dir, "nginx.pid")};
error_log stderr warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${join(dir, "tmp/body")};
  proxy_temp_path ${join(dir, "tmp/proxy")};
  fastcgi_temp_path ${join(dir, "tmp/fastcgi")};
  uwsgi_temp_path ${join(dir, "tmp/uwsgi")};
  scgi_temp_path ${join(dir, "tmp/scgi")};
  upstream runtime {
    server 127.0.0.1:${upstreamPort};
    keepalive 32;
  }
  server {
    listen 127.0.0.1:${port};
    client_max_body_size 0;
    location / {
      proxy_pass http://runtime;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`;
  await writeFile(join(dir, "nginx.conf"), conf);
  const child = spawn("/usr/sbin/nginx", ["-p", dir, "-c", join(dir, "nginx.conf"), "-e", "stderr"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  return serving(child, port);
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
      "180000",
      ...extraArgs,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const log = tail(child);
  const url = await fennecUrl(child).catch((err: unknown) => {
    throw new Error(`fennec serve did not start: ${String(err)} ${log()}`);
  });
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
