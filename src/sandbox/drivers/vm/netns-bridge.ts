/**
 * Run inside a network namespace (`ip netns exec NS node netns-bridge.js MAP...`), where a VM's
 * tap lives: relays TCP connections in the namespace to Unix sockets and back. Unix sockets are
 * not namespaced, so Fennec, in its own namespace, reaches the guest and the guest's callback
 * reaches Fennec without any address outside the namespace. Each MAP is
 *   `tcp:HOST:PORT=unix:PATH`  listen on HOST:PORT in the namespace, relay to PATH, or
 *   `unix:PATH=tcp:HOST:PORT`  listen on PATH, relay to HOST:PORT in the namespace.
 * Prints "ready" once every listener listens; exits when its parent (Fennec) goes away.
 */
import { once } from "node:events";
import { connect, createServer, type Socket } from "node:net";

type Target = { readonly path: string } | { readonly host: string; readonly port: number };

function parse(spec: string): Target {
  if (spec.startsWith("unix:")) return { path: spec.slice(5) };
  const m = /^tcp:(.+):(\d+)$/.exec(spec);
  if (!m) throw new Error(`not a tcp:HOST:PORT or unix:PATH: ${spec}`);
  return { host: m[1]!, port: Number(m[2]) };
}

function relay(client: Socket, to: Target): void {
  const upstream = "path" in to ? connect(to.path) : connect(to.port, to.host);
  client.pipe(upstream).pipe(client);
  const end = () => {
    client.destroy();
    upstream.destroy();
  };
  client.on("error", end);
  upstream.on("error", end);
  client.on("close", end);
  upstream.on("close", end);
}

async function main(maps: readonly string[]): Promise<void> {
  for (const map of maps) {
    const [from, to] = map.split("=");
    if (!from || !to) throw new Error(`not FROM=TO: ${map}`);
    const listen = parse(from);
    const target = parse(to);
    const server = createServer((c) => relay(c, target));
    if ("path" in listen) server.listen(listen.path);
    else server.listen(listen.port, listen.host);
    await once(server, "listening");
  }
  process.stdout.write("ready\n");
  // Fennec holds our stdin: when it goes, so do we (no bridge outlives its instance).
  process.stdin.resume();
  process.stdin.on("end", () => process.exit(0));
  process.stdin.on("error", () => process.exit(0));
}

main(process.argv.slice(2)).catch((err: unknown) => {
  process.stderr.write(`netns-bridge: ${(err as Error).message}\n`);
  process.exit(1);
});
