/**
 * The relay a PortForwarder (port-forwarder.ts) runs in a sandbox's network namespace, for a
 * function that serves HTTP on a TCP port there (UniFaaS's programs: 0.0.0.0:8080) instead of on
 * Fennec's Unix socket. It waits until 127.0.0.1:PORT accepts a connection, then listens on the
 * Unix socket SOCKET and relays each connection to the port. Unix sockets are not namespaced, so
 * Fennec reaches the function through SOCKET while the function has no network but its loopback;
 * and since SOCKET appears only once the port answers, its appearing is the readiness signal.
 *
 * Environment: FENNEC_RELAY_SOCKET (the path to listen on), FENNEC_RELAY_PORT. Exits when its
 * stdin ends (Fennec, or the runtime's exec that carries it, went away).
 *
 * Started as `node --input-type=module -e <this file's compiled text>`: it imports nothing but
 * Node's own modules and reads no file, so the same text runs on the host (runc: in the container's
 * network namespace only) and inside a gVisor sandbox, on whatever Node the sandbox's root has.
 */
import { once } from "node:events";
import { connect, createServer, type Socket } from "node:net";

const socketPath = process.env["FENNEC_RELAY_SOCKET"] ?? "";
const port = Number(process.env["FENNEC_RELAY_PORT"]);

/** Whether something accepts on 127.0.0.1:port now (in this namespace, a refusal is immediate). */
function answers(): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect(port, "127.0.0.1");
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", () => resolve(false));
  });
}

/** Both directions, each ended on its own (an HTTP client may half-close); an error ends both. */
function relay(client: Socket): void {
  const upstream = connect({ port, host: "127.0.0.1", allowHalfOpen: true });
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

async function main(): Promise<void> {
  if (!socketPath || !Number.isInteger(port) || port < 1 || port > 65535)
    throw new Error("needs FENNEC_RELAY_SOCKET and FENNEC_RELAY_PORT");
  // The carrier going away ends the relay, also while it is still waiting for the port.
  process.stdin.on("end", () => process.exit(0));
  process.stdin.on("error", () => process.exit(0));
  process.stdin.resume();
  // Polled as Fennec's guest agent polls its function: 2 ms, growing to 20 ms between tries.
  for (let delay = 2; !(await answers()); delay = Math.min(delay + 2, 20))
    await new Promise((r) => setTimeout(r, delay));
  const server = createServer({ allowHalfOpen: true }, relay);
  server.listen(socketPath);
  await once(server, "listening");
}

main().catch((err: unknown) => {
  process.stderr.write(`port-relay: ${(err as Error).message}\n`);
  process.exit(1);
});
