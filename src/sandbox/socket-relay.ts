/**
 * The relay Fennec runs inside a network namespace to reach across it through Unix sockets, which
 * are not namespaced: each route listens on one side (a Unix socket, or a TCP address in the
 * namespace) and relays every connection to the other. Two users:
 * - port-forwarder.ts, in a sandbox's own namespace, for a function that serves HTTP on a TCP port
 *   there (UniFaaS's programs: 0.0.0.0:8080): a socket in the instance's socket directory to
 *   127.0.0.1:PORT, listening only once the port answers (`awaitTargets`), so the socket's
 *   appearing is the readiness signal while the function has no network but its loopback;
 * - tap-network.ts, in the namespace of a VM's tap: the guest's callback and its 8080, both ways.
 *
 * Environment: FENNEC_RELAY, a JSON `RelayPlan`. Prints "ready" once every route listens, and exits
 * when its stdin ends (Fennec, or the runtime's exec that carries it, went away).
 *
 * Runs as a file (`node socket-relay.js`) or as text (`node --input-type=module -e <this file's
 * compiled text>`): it imports nothing but Node's own modules and reads no file, so the same text
 * runs on the host and inside a gVisor sandbox, on whatever Node the sandbox's root has.
 */
import { once } from "node:events";
import { connect, createServer, type Socket } from "node:net";

/** One side of a route: a Unix socket's path (relative to the working directory, or absolute) or a TCP address. */
export type RelayAddress = { readonly path: string } | { readonly host: string; readonly port: number };

/** What the relay does: its routes, and whether each listens only once its target answers. */
export interface RelayPlan {
  readonly routes: ReadonlyArray<{ readonly listen: RelayAddress; readonly to: RelayAddress }>;
  readonly awaitTargets?: boolean;
}

const open = (to: RelayAddress) =>
  "path" in to ? connect({ path: to.path, allowHalfOpen: true }) : connect({ ...to, allowHalfOpen: true });

/** Whether something accepts on `to` now (in a namespace of its own, a refusal is immediate). */
function answers(to: RelayAddress): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = open(to);
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", () => resolve(false));
  });
}

/** Both directions, each ended on its own (an HTTP client may half-close); an error ends both. */
function relay(client: Socket, to: RelayAddress): void {
  const upstream = open(to);
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
  const plan = JSON.parse(process.env["FENNEC_RELAY"] ?? "{}") as RelayPlan;
  if (plan.routes.length === 0) throw new Error("FENNEC_RELAY has no routes");
  // Fennec holds our stdin: when it goes, so do we (no relay outlives its instance), also while
  // still waiting for a target.
  process.stdin.on("end", () => process.exit(0));
  process.stdin.on("error", () => process.exit(0));
  process.stdin.resume();
  for (const { listen, to } of plan.routes) {
    // Polled as Fennec's guest agent polls its function: 2 ms, growing to 20 ms between tries.
    if (plan.awaitTargets)
      for (let delay = 2; !(await answers(to)); delay = Math.min(delay + 2, 20))
        await new Promise((r) => setTimeout(r, delay));
    const server = createServer({ allowHalfOpen: true }, (c) => relay(c, to));
    if ("path" in listen) server.listen(listen.path);
    else server.listen(listen.port, listen.host);
    await once(server, "listening");
  }
  process.stdout.write("ready\n");
}

main().catch((err: unknown) => {
  process.stderr.write(`socket-relay: ${(err as Error).message}\n`);
  process.exit(1);
});
