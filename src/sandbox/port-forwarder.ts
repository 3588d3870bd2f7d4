import { spawn, type ChildProcess, type SpawnOptions } from "node:child_process";
import { readFileSync } from "node:fs";
import { basename, dirname } from "node:path";
import type { Duplex } from "node:stream";
import { fileURLToPath } from "node:url";
import type Docker from "dockerode";
import { FennecError } from "../core/errors.js";
import { findExecutable } from "./host-view.js";
import type { RelayPlan } from "./socket-relay.js";
import { SANDBOX_USER } from "./unprivileged.js";

const RELAY = fileURLToPath(new URL("./socket-relay.js", import.meta.url));
const TAIL = 2048;

let relaySource: string | undefined;
/** The relay's text, passed on its command line: a sandbox's root need not contain Fennec. */
function relayArgs(): string[] {
  relaySource ??= readFileSync(RELAY, "utf8");
  return ["--input-type=module", "-e", relaySource];
}

/**
 * Where the relay runs: always in the sandbox's network namespace, and nowhere near any other.
 * - `netns`: runc. A host process (`nsenter --net`) joins the network namespace of the container's
 *   init and only that (not its mounts, cgroup or PID namespace), as the sandbox user; it listens
 *   on the socket's host path. Its memory is not charged to the function.
 * - `exec`: gVisor. Its netstack lives inside the sandbox (the sandbox process's own namespace has
 *   nothing of the guest's loopback), so the relay is a process in the container, started by the
 *   runtime's exec (`argv`: the runtime's command up to the program) with the sandbox's Node. It
 *   listens on the socket's path inside, in the bind-mounted socket directory (`--host-uds`).
 * - `docker`: the same through the Engine API's exec, for a Docker container on gVisor.
 */
export type RelayPlace =
  | { readonly kind: "netns"; readonly pid: number; readonly socketPath: string }
  | {
      readonly kind: "exec";
      /** The runtime's command up to its `exec` flags; `--env`, the container id and Node follow. */
      readonly argv: readonly string[];
      readonly id: string;
      readonly node: string;
      readonly socketPath: string;
    }
  | {
      readonly kind: "docker";
      readonly container: Docker.Container;
      readonly node: string;
      readonly socketPath: string;
    };

/** The socket to the port, listening once the port answers (the socket's appearing is the readiness). */
function relayEnv(socketPath: string, port: number): Record<string, string> {
  const plan: RelayPlan = {
    routes: [{ listen: { path: socketPath }, to: { host: "127.0.0.1", port } }],
    awaitTargets: true,
  };
  return { FENNEC_RELAY: JSON.stringify(plan) };
}

/** The command line (and working directory) of a relay a host process starts or carries. */
function relayCommand(
  place: Exclude<RelayPlace, { kind: "docker" }>,
  port: number,
): { argv: string[]; options: SpawnOptions } {
  if (place.kind === "exec") {
    return {
      // `exec` carries the relay's environment by flags.
      argv: [
        ...place.argv,
        ...Object.entries(relayEnv(place.socketPath, port)).flatMap(([k, v]) => ["--env", `${k}=${v}`]),
        place.id,
        place.node,
        ...relayArgs(),
      ],
      options: { env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin" } },
    };
  }
  return {
    argv: [
      findExecutable("nsenter", "util-linux"),
      `--net=/proc/${place.pid}/ns/net`,
      `--setuid=${SANDBOX_USER.uid}`,
      `--setgid=${SANDBOX_USER.gid}`,
      "--",
      process.execPath,
      ...relayArgs(),
    ],
    // The sandbox user may not pass through the run directory (root's, 0700) to the socket
    // directory: the relay starts in that directory and binds a relative name.
    options: { env: relayEnv(basename(place.socketPath), port), cwd: dirname(place.socketPath) },
  };
}

/**
 * A relay from a Unix socket to a TCP port in a sandbox's own network namespace (socket-relay.ts):
 * how Fennec reaches a function that serves on a port (UniFaaS's 8080) without giving it any
 * network but its loopback. The socket appears once the port answers: the driver's wait for the
 * socket is the readiness signal, and the function is told `ignore` for a callback it could not
 * reach. The relay is supervised: `failed` rejects if it ends before `stop()`, which kills it (by
 * its PID, or by closing the exec's stream) and resolves once it is gone.
 */
export class PortForwarder {
  readonly #port: number;
  readonly #what: string;
  readonly failed: Promise<never>;
  #fail!: (err: Error) => void;
  #child: ChildProcess | undefined;
  #stream: Duplex | undefined;
  #gone: Promise<void> = Promise.resolve();
  #output = "";
  #stopped = false;
  readonly #stopping = new AbortController();

  constructor(o: { readonly port: number; readonly what: string }) {
    this.#port = o.port;
    this.#what = o.what;
    this.failed = new Promise<never>((_, reject) => (this.#fail = reject));
    this.failed.catch(() => undefined); // a driver races it; unobserved after the start is fine
  }

  /**
   * Starts the relay once `place` says where (the sandbox must exist for its namespace to); the
   * signal it gets is aborted by stop(), so a place still being looked for is given up.
   */
  start(place: (signal: AbortSignal) => Promise<RelayPlace>): void {
    // A launch that throws (no nsenter, say) fails the relay like a place that cannot be found.
    place(this.#stopping.signal)
      .then((p) => (this.#stopped ? undefined : this.#launch(p)))
      .catch((err: unknown) => this.#fail(err instanceof Error ? err : new Error(String(err))));
  }

  #launch(place: RelayPlace): void {
    if (place.kind === "docker") return void this.#dockerExec(place).catch((e: Error) => this.#fail(e));
    const { argv, options } = relayCommand(place, this.#port);
    const child = spawn(argv[0]!, argv.slice(1), { ...options, stdio: ["pipe", "pipe", "pipe"] });
    this.#child = child;
    const keep = (b: Buffer) => (this.#output = (this.#output + b.toString()).slice(-TAIL));
    child.stdout.on("data", keep);
    child.stderr.on("data", keep);
    child.stdin.on("error", () => undefined);
    this.#gone = new Promise((resolve) => {
      child.once("error", (err) => {
        this.#fail(
          new FennecError(
            "SANDBOX_START_FAILED",
            `${this.#what}: cannot start its port relay: ${err.message}`,
          ),
        );
        resolve();
      });
      child.once("exit", (code, signal) => {
        if (!this.#stopped) this.#fail(this.#ended(`exited (${code ?? signal})`));
        resolve();
      });
    });
  }

  async #dockerExec(place: Extract<RelayPlace, { kind: "docker" }>): Promise<void> {
    const env = relayEnv(place.socketPath, this.#port);
    const exec = await place.container.exec({
      Cmd: [place.node, ...relayArgs()],
      // The image's PATH may be unset (an imported root): Docker's own default then.
      Env: [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ...Object.entries(env).map(([k, v]) => `${k}=${v}`),
      ],
      User: `${SANDBOX_USER.uid}:${SANDBOX_USER.gid}`,
      AttachStdin: true,
      AttachStdout: true,
      AttachStderr: true,
    });
    // The attached stream is the relay's stdin: closing it ends the relay.
    const stream = await exec.start({ hijack: true, stdin: true });
    this.#stream = stream;
    stream.on("data", (b: Buffer) => (this.#output = (this.#output + b.toString()).slice(-TAIL)));
    this.#gone = new Promise((resolve) => {
      stream.once("close", () => {
        if (!this.#stopped) this.#fail(this.#ended("ended"));
        resolve();
      });
      stream.once("error", () => undefined);
    });
    if (this.#stopped) stream.destroy();
  }

  #ended(how: string): FennecError {
    const out = this.#output
      .replace(/[^\x20-\x7e\n]/g, "")
      .trim()
      .slice(-500);
    return new FennecError(
      "SANDBOX_START_FAILED",
      `${this.#what}: its relay to port ${this.#port} ${how}${out ? `: ${out}` : ""}`,
    );
  }

  /** Ends the relay and resolves once it is gone; idempotent. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#stopping.abort(new FennecError("INSTANCE_GONE", `${this.#what} was stopped`));
    const child = this.#child;
    if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    // Its stdin's last writer: a relay inside a sandbox (which holds the other end) sees it end.
    child?.stdin?.destroy();
    this.#stream?.destroy();
    await this.#gone;
  }
}
