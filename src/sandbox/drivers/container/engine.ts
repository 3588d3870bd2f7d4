import { createRequire } from "node:module";
import { basename } from "node:path";
import { Readable } from "node:stream";
import type Docker from "dockerode";
import { create as createTar } from "tar";
import { FennecError } from "../../../core/errors.js";
import type { FunctionConfig } from "../../../config/function-config.js";
import { INSIDE } from "../../host-view.js";

/** Labels Fennec puts on everything it creates in a Docker engine, to find its own leftovers. */
export const LABEL = {
  /** Which Fennec (by its run directory) made the container. */
  owner: "dev.fennec.owner",
  /** PID of the Fennec process that made it: a container whose Fennec is gone is debris. */
  pid: "dev.fennec.pid",
  /** Its process start time (/proc/<pid>/stat): a recycled PID does not pass for that Fennec. */
  pidStart: "dev.fennec.pid-start",
  instance: "dev.fennec.instance",
  function: "dev.fennec.function",
  /** On images built from a handler: the digest of the root filesystem they were made from. */
  digest: "dev.fennec.rootfs-digest",
} as const;

/** The Engine API socket: `DOCKER_HOST` when it names a Unix socket, else Docker's default. */
export function defaultDockerSocket(): string {
  const host = process.env["DOCKER_HOST"];
  if (host?.startsWith("unix://")) return host.slice("unix://".length);
  return "/var/run/docker.sock";
}

/** How gVisor is named in daemon.json for Fennec: no network, the socket transport, seccomp applied. */
const RUNSC_EXAMPLE =
  '{"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--host-uds=all", "--oci-seccomp"]}}}';

/** Whether a runtime's binary is gVisor's runsc. */
function isGvisor(path: string): boolean {
  return basename(path) === "runsc";
}

const UNREACHABLE_HINT =
  "is it running? Install it with `apt-get install docker.io` and start it (here: `dockerd --iptables=false --bridge=none`)";

/**
 * Fennec's view of one Docker engine, through its Engine API (dockerode): reachability with a clear
 * error, the runtimes it offers, images (imported from a built root filesystem, since no registry
 * is reachable) and the containers Fennec owns.
 */
export class DockerEngine {
  readonly socketPath: string;
  #api: Docker | undefined;

  constructor(socketPath: string) {
    this.socketPath = socketPath;
  }

  /**
   * The Engine API client, loaded at its first use: dockerode and its dependencies (ssh2, the HTTP
   * modem, ...) take a noticeable share of start-up and memory, and a node that runs no container
   * never needs them. Loaded with `require` (it is a CommonJS package) so that this stays a plain
   * synchronous getter for the driver.
   */
  get api(): Docker {
    if (!this.#api) {
      const Client = createRequire(import.meta.url)("dockerode") as typeof Docker;
      this.#api = new Client({ socketPath: this.socketPath, timeout: 0 });
    }
    return this.#api;
  }

  /** Turns a failure to reach the daemon into BACKEND_DOWN; others pass through. */
  unavailable(err: unknown): FennecError | undefined {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ECONNREFUSED" || code === "EACCES" || code === "ECONNRESET") {
      return new FennecError(
        "BACKEND_DOWN",
        `the Docker engine at unix://${this.socketPath} cannot be reached (${code}): ${UNREACHABLE_HINT}`,
      );
    }
    return undefined;
  }

  async #call<T>(what: () => Promise<T>): Promise<T> {
    try {
      return await what();
    } catch (err) {
      throw this.unavailable(err) ?? err;
    }
  }

  async ping(): Promise<void> {
    await this.#call(() => this.api.ping());
  }

  /**
   * Fails with the package to install when the engine has no such runtime configured, and refuses
   * a gVisor runtime configured without `--oci-seccomp`: without it runsc ignores the seccomp
   * profile Docker puts in the container's spec, and the function would run with no filter.
   * Says whether the runtime is gVisor.
   */
  async requireRuntime(runtime: string | undefined): Promise<{ gvisor: boolean }> {
    if (runtime === undefined) return { gvisor: false };
    const info = (await this.#call(() => this.api.info())) as {
      Runtimes?: Record<string, { path?: string; runtimeArgs?: string[] }>;
    };
    const configured = info.Runtimes?.[runtime];
    if (configured && !isGvisor(configured.path ?? runtime)) return { gvisor: false };
    if (configured?.runtimeArgs?.includes("--oci-seccomp")) return { gvisor: true };
    if (configured) {
      throw new FennecError(
        "SANDBOX_START_FAILED",
        `the Docker engine's runtime "${runtime}" is gVisor without --oci-seccomp, so it would ignore ` +
          `Docker's seccomp profile inside the sandbox: add "--oci-seccomp" to its "runtimeArgs" in ` +
          `/etc/docker/daemon.json (${RUNSC_EXAMPLE}), then reload dockerd (SIGHUP)`,
      );
    }
    const pkg = runtime === "runsc" ? "runsc" : runtime;
    throw new FennecError(
      "SANDBOX_START_FAILED",
      `the Docker engine has no runtime "${runtime}" (it has: ${Object.keys(info.Runtimes ?? {}).join(", ")}): ` +
        `install it (apt-get install ${pkg}) and name it under "runtimes" in /etc/docker/daemon.json, ` +
        `e.g. ${RUNSC_EXAMPLE}, then reload dockerd (SIGHUP)`,
    );
  }

  async hasImage(ref: string): Promise<boolean> {
    try {
      await this.#call(() => this.api.getImage(ref).inspect());
      return true;
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404) return false;
      throw err;
    }
  }

  /**
   * `docker import` of a root filesystem directory as image `ref` with the given entrypoint (for a
   * handler: Node running the handler runtime on the bundle), so that the container's argument is
   * the readiness callback URL.
   */
  async importRootfs(dir: string, ref: string, digest: string, entrypoint: readonly string[]): Promise<void> {
    const [repo, tag] = splitRef(ref);
    // node-tar streams are Minipass streams; the Engine API client pipes a Node Readable.
    const tarball = Readable.from(
      createTar(
        {
          cwd: dir,
          portable: true,
          // `portable` clears group and world write bits; /tmp (sticky, 1777) must keep them: the
          // container runs unprivileged and runc gives the /tmp tmpfs the mode of the image's /tmp.
          onWriteEntry: (entry) => {
            if (entry.type === "Directory" && (entry.stat?.mode ?? 0) & 0o1000) entry.portable = false;
          },
        },
        ["."],
      ),
    );
    const changes = [
      `ENTRYPOINT ${JSON.stringify(entrypoint)}`,
      `WORKDIR ${INSIDE.functionDir}`,
      `ENV HOME=/tmp TMPDIR=/tmp`,
      `LABEL ${LABEL.digest}=${digest}`,
    ];
    const progress = await this.#call(() => this.api.importImage(tarball, { repo, tag, changes }));
    const events = await new Promise<Array<{ error?: string }>>((resolve, reject) =>
      this.api.modem.followProgress(progress, (err: Error | null, out: Array<{ error?: string }>) =>
        err ? reject(err) : resolve(out),
      ),
    );
    const failed = events.find((e) => e.error);
    if (failed) throw new FennecError("FN_BAD_MODULE", `docker import of ${dir} as ${ref}: ${failed.error}`);
  }

  /**
   * Removes tags of `ref`'s repository other than `ref` itself (older builds of a handler image),
   * with the image when that was its last tag. One still used by a container is left for later.
   */
  async removeOtherTags(ref: string): Promise<string[]> {
    const [repo] = splitRef(ref);
    const images = await this.#call(() => this.api.listImages({ filters: { reference: [repo] } }));
    const removed: string[] = [];
    for (const tag of images.flatMap((i) => i.RepoTags ?? [])) {
      if (tag === ref || splitRef(tag)[0] !== repo) continue;
      if (await this.removeImage(tag)) removed.push(tag);
    }
    return removed;
  }

  /** Removes one image tag; false when it is gone already or still in use by a container. */
  async removeImage(ref: string): Promise<boolean> {
    try {
      await this.#call(() => this.api.getImage(ref).remove());
      return true;
    } catch {
      return false;
    }
  }

  /** Containers this Fennec (identified by its run directory) made, live or not. */
  async ownContainers(owner: string): Promise<Docker.ContainerInfo[]> {
    return this.#call(() =>
      this.api.listContainers({ all: true, filters: { label: [`${LABEL.owner}=${owner}`] } }),
    );
  }
}

function splitRef(ref: string): [string, string] {
  const colon = ref.lastIndexOf(":");
  return colon > ref.lastIndexOf("/") ? [ref.slice(0, colon), ref.slice(colon + 1)] : [ref, "latest"];
}

/** The image Fennec builds for a handler function: named after it, tagged with the rootfs digest. */
export function handlerImageRef(config: FunctionConfig, digest: string): string {
  // Docker's repository grammar: lowercase alphanumeric components joined by separators.
  const name = config.key
    .split("/")
    .map(
      (part) =>
        part
          .toLowerCase()
          .replace(/[^a-z0-9]+/g, "-")
          .replace(/^-+|-+$/g, "") || "fn",
    )
    .join("/");
  return `fennec-fn/${name}:${digest.slice(0, 16)}`;
}
