/**
 * The servers only the warm-hop and streaming benchmarks use (the shared ones, Fennec and workerd,
 * are in servers.ts): Fennec's handler runtime alone on a loopback port, nginx proxying to it, and
 * a bare Node proxy, each a child of the benchmark stopped by its PID.
 */
import { spawn } from "node:child_process";
import { chmod, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { HANDLER_RUNTIME } from "../src/sandbox/handler-build.js";
import { freePort, orStop, serving, stopChild, tail, waitForUrl, type Server } from "./servers.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));

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

/**
 * The bare Node reverse proxy (node-proxy.ts) in front of `upstreamPort`; `whole`: small bodies
 * read whole each way instead of streamed.
 */
export async function startNodeProxy(upstreamPort: number, mode?: "whole"): Promise<Server> {
  const args = [join(ROOT, "dist/bench/node-proxy.js"), String(upstreamPort), ...(mode ? [mode] : [])];
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
  const log = tail(child);
  const port = await orStop(
    child,
    new Promise<number>((resolve, reject) => {
      child.stdout.once("data", (d: Buffer) => resolve(Number(d.toString().trim())));
      child.once("exit", (code) => reject(new Error(`the Node proxy exited (${code}): ${log()}`)));
    }),
  );
  const url = `http://127.0.0.1:${port}/`;
  await orStop(child, waitForUrl(url, child, log));
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
