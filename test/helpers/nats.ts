import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, openSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, type ConnectionOptions } from "@nats-io/transport-node";
import { findExecutable } from "../../src/sandbox/host-view.js";

const PREFIX = "fennec-nats-";

/** A nats-server of the test's own (JetStream on, file storage in a temp dir, a free loopback port). */
export interface TestNats {
  /** `nats://127.0.0.1:PORT`; the same across restarts. */
  readonly url: string;
  readonly port: number;
  readonly dir: string;
  /** Stops it (SIGTERM, then SIGKILL) keeping its store, and starts it again on the same port. */
  restart(): Promise<void>;
  /** SIGKILL, store kept: a crash. `start()` brings it back. */
  kill(): Promise<void>;
  start(): Promise<void>;
  /** Stops it and removes its directory. Idempotent. */
  stop(): Promise<void>;
  /** The server's log so far (for failure messages). */
  log(): string;
}

/** Whether process `pid` still runs (a test server's, recorded in its directory). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Removes the directories of test servers whose process is gone (a test run that crashed). */
function sweepStale(): void {
  for (const name of readdirSync(tmpdir()).filter((n) => n.startsWith(PREFIX))) {
    const dir = join(tmpdir(), name);
    const pidFile = join(dir, "pid");
    const pid = Number(existsSync(pidFile) ? readFileSync(pidFile, "utf8") : NaN);
    if (Number.isInteger(pid) && alive(pid)) continue;
    void rm(dir, { recursive: true, force: true });
  }
}

/** Authentication the test server requires (none by default). */
export interface NatsAuth {
  /** `--user U --pass P`. */
  readonly user?: string;
  readonly pass?: string;
  /** `--auth TOKEN`. */
  readonly token?: string;
  /**
   * A configuration file's contents (`-c`), for what flags cannot say (nkey users, TLS); its
   * paths may use `$DIR`, the server's directory.
   */
  readonly config?: string;
  /** What the start-up probe connects with (default: the user/pass or token above). */
  readonly client?: Partial<ConnectionOptions>;
}

/**
 * Starts Debian's nats-server (`.ci/run` installs it) with `-js`, its store in a temp directory and
 * a port the kernel picks, and waits until a client gets JetStream's account info from it.
 */
export async function startNats(auth: NatsAuth = {}): Promise<TestNats> {
  sweepStale();
  const bin = findExecutable("nats-server", "nats-server");
  const dir = await mkdtemp(join(tmpdir(), PREFIX));
  let port = -1;
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  const logPath = join(dir, "nats.log");
  const log = () => (existsSync(logPath) ? readFileSync(logPath, "utf8").slice(-4000) : "");

  const authArgs: string[] = [];
  if (auth.user !== undefined) authArgs.push("--user", auth.user, "--pass", auth.pass ?? "");
  if (auth.token !== undefined) authArgs.push("--auth", auth.token);
  if (auth.config !== undefined) {
    writeFileSync(join(dir, "nats.conf"), auth.config.replaceAll("$DIR", dir));
    authArgs.push("-c", join(dir, "nats.conf"));
  }
  const probe: Partial<ConnectionOptions> = auth.client ?? {
    ...(auth.user !== undefined ? { user: auth.user, pass: auth.pass ?? "" } : {}),
    ...(auth.token !== undefined ? { token: auth.token } : {}),
  };
  const start = async (): Promise<void> => {
    const logFd = openSync(logPath, "a");
    const c = spawn(
      bin,
      [
        ...authArgs,
        "-js",
        "-sd",
        join(dir, "store"),
        "-a",
        "127.0.0.1",
        "-p",
        String(port),
        "-P",
        join(dir, "pid"),
      ]
        // The first start takes a free port and writes it down; restarts reuse it.
        .concat(port === -1 ? ["--ports_file_dir", dir] : []),
      { stdio: ["ignore", "ignore", logFd] },
    );
    closeSync(logFd);
    child = c;
    exited = new Promise<void>((resolve) => c.once("exit", () => resolve()));
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (c.exitCode !== null) throw new Error(`nats-server exited at start:\n${log()}`);
      if (Date.now() > deadline) throw new Error(`nats-server did not come up in 60 s:\n${log()}`);
      if (port === -1) {
        const file = readdirSync(dir).find((n) => n.endsWith(".ports"));
        if (file) {
          const ports = JSON.parse(await readFile(join(dir, file), "utf8")) as { nats: string[] };
          port = Number(new URL(ports.nats[0] ?? "").port);
        }
      }
      if (port !== -1) {
        try {
          const nc = await connect({ ...probe, servers: `nats://127.0.0.1:${port}`, timeout: 2_000 });
          try {
            const { jetstreamManager } = await import("@nats-io/jetstream");
            await (await jetstreamManager(nc)).getAccountInfo();
            return;
          } finally {
            await nc.close();
          }
        } catch {
          // not up yet, or JetStream still recovering its store
        }
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  const halt = async (signal: NodeJS.Signals): Promise<void> => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill(signal);
    const timer = setTimeout(() => c.kill("SIGKILL"), 15_000);
    await exited;
    clearTimeout(timer);
  };

  let stopped = false;
  await start().catch(async (err: unknown) => {
    await halt("SIGKILL");
    await rm(dir, { recursive: true, force: true });
    throw err;
  });
  return {
    get url() {
      return `nats://127.0.0.1:${port}`;
    },
    get port() {
      return port;
    },
    dir,
    log,
    start,
    kill: () => halt("SIGKILL"),
    restart: async () => {
      await halt("SIGTERM");
      await start();
    },
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await halt("SIGTERM");
      await rm(dir, { recursive: true, force: true });
    },
  };
}
