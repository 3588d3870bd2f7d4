import type Docker from "dockerode";
import { FennecError } from "../../../core/errors.js";
import type { ContainerSandboxConfig, FunctionConfig } from "../../../config/function-config.js";
import { sandboxOf } from "../../../config/sandbox-table.js";
import { CleanupStack } from "../../cleanup-stack.js";
import type { CleanupReport, SandboxDriver, SandboxHandle, StartContext } from "../../contract.js";
import { HandlerBundles } from "../../handler-build.js";
import { PerRevision } from "../../per-revision.js";
import { INSIDE } from "../../host-view.js";
import { nodeInside, removeOtherRootfs, RootfsBuilds, type BuiltRootfs } from "../../rootfs-build.js";
import { selfIdentity, startTime, stillRunning } from "../../../core/process-identity.js";
import { createRunDirOn, mergeReports, runRoot, sweepStale } from "../../run-dir.js";
import { seccompProfile } from "../../seccomp.js";
import { SANDBOX_USER } from "../../unprivileged.js";
import { BINDING_INSIDE, createSocketDir, readyOnSocket, SOCKET_INSIDE } from "../../socket-dir.js";
import { openBinding, type HostBinding } from "../../host-binding.js";
import { exitFromStatus, SupervisedChild, type Child, type ChildExit } from "../../supervised-child.js";
import { DockerEngine, defaultDockerSocket, handlerImageRef, LABEL } from "./engine.js";
import { followOutput } from "./follow-output.js";
import { forwardContainerPort } from "./port-forward.js";

/** The lines of a container's log an error message quotes from. */
const LOG_LINES = 20;

const containerOf = (config: FunctionConfig): ContainerSandboxConfig => sandboxOf(config, "container");

export interface ContainerDriverOptions {
  /** The Engine API's Unix socket; default `DOCKER_HOST` (unix://) or /var/run/docker.sock. */
  readonly socketPath?: string;
}

/**
 * `[container]` (UniFaaS): the function as a Docker container, through the Engine API. The image is
 * the user's (`image`, already on the engine: nothing is pulled) or, for a `handler`, one Fennec
 * imports from the handler's built root filesystem. As in UniFaaS the readiness callback URL is the
 * container's argument; Fennec's own transport is a Unix socket in a bind-mounted directory, and
 * with no network (the default) the socket accepting is the readiness signal. Every container is
 * labelled with its owner, so one started by a Fennec that crashed is found and removed at start.
 */
export class ContainerDriver implements SandboxDriver {
  readonly name = "container";
  readonly capabilities = { snapshot: false, oomDetection: true } as const;
  readonly engine: DockerEngine;
  readonly #bundles = new HandlerBundles();
  readonly #rootfs = new RootfsBuilds();
  /** Image builds per function revision, each done once. */
  readonly #images = new PerRevision<string>();
  readonly #owner = runRoot("container");
  /** The newest handler image of each function. */
  readonly #currentImage = new Map<string, string>();

  constructor(options: ContainerDriverOptions = {}) {
    this.engine = new DockerEngine(options.socketPath ?? defaultDockerSocket());
  }

  memoryMiB(config: FunctionConfig): number {
    return containerOf(config).memoryMiB;
  }

  async prepare(config: FunctionConfig): Promise<void> {
    await this.image(config);
  }

  /**
   * The image an instance runs: the configured one, checked to be on the engine, or the one built
   * from the handler (bundle, then root filesystem, then `docker import`), once per revision.
   */
  image(config: FunctionConfig): Promise<string> {
    return this.#images.get(config, () => this.#resolveImage(config));
  }

  /**
   * Builds (or checks) a function's image now, reporting each step: what `fennec build` runs ahead
   * of time. Unlike image(), not cached: a build always looks at the engine.
   */
  buildImage(config: FunctionConfig, progress: (line: string) => void): Promise<string> {
    return this.#resolveImage(config, progress);
  }

  async #resolveImage(config: FunctionConfig, progress?: (line: string) => void): Promise<string> {
    const cfg = containerOf(config);
    if (cfg.image !== undefined) {
      if (!(await this.engine.hasImage(cfg.image))) {
        throw new FennecError(
          "FN_BAD_MODULE",
          `${config.key}: image ${cfg.image} is not on the Docker engine at unix://${this.engine.socketPath}; ` +
            "Fennec pulls nothing: `docker import` or `docker load` it first",
        );
      }
      progress?.(`image ${cfg.image} is on the engine`);
      return cfg.image;
    }
    const rootfs = await this.handlerRootfs(config, progress);
    const ref = handlerImageRef(config, rootfs.digest);
    if (await this.engine.hasImage(ref)) progress?.(`image ${ref} is on the engine already`);
    else {
      const t0 = performance.now();
      const entrypoint = [await nodeInside(), INSIDE.runtime, INSIDE.bundle];
      await this.engine.importRootfs(rootfs.dir, ref, rootfs.digest, entrypoint);
      progress?.(`image ${ref} imported (${(performance.now() - t0).toFixed(0)} ms)`);
    }
    this.#currentImage.set(config.key, ref);
    // Older builds of this function's image (a rebuild for a new digest) and their roots go; an
    // image a container still runs on goes when that container does (see ContainerInstance).
    for (const old of await this.engine.removeOtherTags(ref).catch(() => [] as string[]))
      progress?.(`removed the older image ${old}`);
    await removeOtherRootfs(config, rootfs);
    return ref;
  }

  /** A handler function's bundle and root filesystem, reporting each step. */
  async handlerRootfs(config: FunctionConfig, progress?: (line: string) => void): Promise<BuiltRootfs> {
    const cfg = containerOf(config);
    if (!cfg.handler) throw new FennecError("INTERNAL", `${config.key} has an image, not a handler`);
    let t0 = performance.now();
    const bundle = await this.#bundles.get(config, cfg.handler);
    progress?.(`handler bundled into ${bundle} (${(performance.now() - t0).toFixed(0)} ms)`);
    t0 = performance.now();
    const rootfs = await this.#rootfs.get(config, bundle);
    progress?.(`root filesystem ${rootfs.dir} (${(performance.now() - t0).toFixed(0)} ms)`);
    return rootfs;
  }

  /** An instance's image is gone: remove it too when a newer build replaced it. */
  async #released(config: FunctionConfig, image: string): Promise<void> {
    const current = this.#currentImage.get(config.key);
    if (current !== undefined && current !== image && image.startsWith("fennec-fn/"))
      await this.engine.removeImage(image);
  }

  /**
   * Removes the containers (labelled with this run root) of a Fennec that is gone: its PID no
   * longer runs the process that started them. Another live Fennec's are not touched; then the run
   * directories, by their owner records.
   */
  async cleanupStale(): Promise<CleanupReport> {
    let containers: Docker.ContainerInfo[];
    try {
      containers = await this.engine.ownContainers(this.#owner);
    } catch {
      containers = []; // no engine, nothing of ours can be running in it
    }
    const removed: string[] = [];
    for (const c of containers) {
      const pid = Number(c.Labels[LABEL.pid]);
      const start = c.Labels[LABEL.pidStart];
      // Without a start time (an older Fennec's label) a running PID is taken for its owner.
      const live =
        start === undefined ? (await startTime(pid)) !== undefined : await stillRunning({ pid, start });
      if (live) continue;
      await this.engine.api
        .getContainer(c.Id)
        .remove({ force: true })
        .then(() => removed.push(`docker:${c.Id.slice(0, 12)}`))
        .catch(() => undefined);
    }
    return mergeReports({ removed, leftAlone: [] }, await sweepStale("container"));
  }

  async start(ctx: StartContext): Promise<SandboxHandle> {
    const cfg = containerOf(ctx.config);
    const what = `${ctx.config.key}: instance ${ctx.instanceId} (docker${cfg.runtime ? `, ${cfg.runtime}` : ""})`;
    const { gvisor } = await this.engine.requireRuntime(cfg.runtime);
    const image = await this.image(ctx.config);
    // What the instance holds, released newest first when it stops or fails to start: last, an
    // image a newer build replaced goes with its last container.
    const cleanup = new CleanupStack();
    cleanup.defer(() => this.#released(ctx.config, image).catch(() => undefined));
    const dir = await createRunDirOn(cleanup, "container", ctx.instanceId);
    let socketDir: string;
    const memory = cfg.memoryMiB * 2 ** 20;
    let container: Docker.Container;
    let binding: HostBinding;
    try {
      socketDir = await createSocketDir(dir);
      binding = await openBinding(cleanup, socketDir, { sandboxUser: true });
      container = await this.engine.api.createContainer({
        name: `fennec-${ctx.instanceId}`,
        Image: image,
        // UniFaaS: the callback URL is the container's argument (after the image's entrypoint).
        // issue10-unifaas (1/3): a port's readiness is the port answering; the callback is unreachable.
        Cmd: [cfg.port === undefined ? ctx.callbackUrl : "ignore"],
        // Never the host's root, whatever the image says (docs/security.md).
        User: `${SANDBOX_USER.uid}:${SANDBOX_USER.gid}`,
        Env: [
          ...Object.entries(cfg.env).map(([k, v]) => `${k}=${v}`),
          `FENNEC_SOCKET=${SOCKET_INSIDE}`,
          `FENNEC_HOST_SOCKET=${BINDING_INSIDE}`,
          `FENNEC_CALLBACK=${ctx.callbackUrl}`,
          `FENNEC_INSTANCE_ID=${ctx.instanceId}`,
        ],
        Labels: {
          [LABEL.owner]: this.#owner,
          [LABEL.pid]: String(process.pid),
          [LABEL.pidStart]: (await selfIdentity()).start,
          [LABEL.instance]: ctx.instanceId,
          [LABEL.function]: ctx.config.key,
        },
        HostConfig: {
          NetworkMode: cfg.network,
          Memory: memory,
          MemorySwap: memory,
          PidsLimit: cfg.pids,
          ReadonlyRootfs: true,
          Tmpfs: { "/tmp": "rw,nosuid,nodev,mode=1777,size=65536k" },
          CapDrop: ["ALL"],
          // A seccomp filter always: Docker's default profile, never `seccomp=unconfined`. Under
          // gVisor (which must run with --oci-seccomp: DockerEngine.requireRuntime) Fennec's own
          // allowlist instead, of the same shape: this runsc ignores errnoRet, so Docker's answer
          // to clone3 (ENOSYS) becomes EPERM, libc does not fall back to clone, and no thread starts.
          SecurityOpt: [
            "no-new-privileges",
            ...(gvisor ? [`seccomp=${JSON.stringify(seccompProfile())}`] : []),
          ],
          Binds: [`${socketDir}:${INSIDE.runDir}:rw`],
          ...(cfg.runtime ? { Runtime: cfg.runtime } : {}),
        },
      });
    } catch (err) {
      await cleanup.run();
      throw (
        this.engine.unavailable(err) ?? new FennecError("SANDBOX_START_FAILED", `${what}: ${message(err)}`)
      );
    }
    cleanup.defer(() => container.remove({ force: true }).catch(() => undefined));
    // Its output as function logs, followed from before it starts; the stream ends before it goes.
    if (ctx.log) {
      try {
        cleanup.defer(await followOutput(this.engine.api, container, ctx.log));
      } catch (err) {
        await cleanup.run();
        throw (
          this.engine.unavailable(err) ??
          new FennecError("SANDBOX_START_FAILED", `${what}: cannot follow its output: ${message(err)}`)
        );
      }
    }
    const started = startContainer(container);
    // issue10-unifaas (2/3): an image serving a port is reached through a relay in its namespace,
    // started once the container runs, stopped before the container is removed.
    const relay =
      cfg.port === undefined
        ? undefined
        : started.running.then((running) =>
            running
              ? forwardContainerPort({ container, gvisor, socketDir, port: cfg.port!, what })
              : undefined,
          );
    if (relay) cleanup.defer(() => relay.then((r) => r?.stop()));
    const child = new SupervisedChild({
      child: started.child,
      what,
      memoryMiB: cfg.memoryMiB,
      // runsc's sandbox is killed as a whole (137) without Docker seeing an OOM kill; nothing else
      // SIGKILLs a container Fennec is not stopping.
      oomKilled: async (exit) =>
        exit.signal === "SIGKILL" ||
        ((await container.inspect().catch(() => undefined))?.State.OOMKilled ?? false),
      moreOutput: () =>
        container.logs({ stdout: true, stderr: true, tail: LOG_LINES }).then((b) => demuxLogs(b)),
      cleanup,
    });
    // Ready when its socket accepts, unless it exits first (a UniFaaS image also calls back, but
    // its socket is the transport: a callback alone does not make it reachable); once ready, the
    // socket is moved out of the container's reach.
    // issue10-unifaas (3/3): a relay that dies fails the start.
    const relayFailed = relay?.then((r) => r?.failed ?? new Promise<never>(() => undefined));
    return readyOnSocket(child, { dir, socketDir, binding }, ctx, relayFailed);
  }
}

/**
 * Starts a created container, as a Child: a start that fails is a failed spawn; then Docker's wait
 * (`not-running`) is its exit, and signals go through the engine.
 */
function startContainer(container: Docker.Container): { child: Child; running: Promise<boolean> } {
  const unknown: ChildExit = { exitCode: -1, signal: null };
  const start = container.start().then(
    () => undefined,
    (err: unknown) => new Error(message(err)),
  );
  const exited = start.then((spawnError) =>
    spawnError
      ? { ...unknown, spawnError }
      : container.wait({ condition: "not-running" }).then(
          (result: { StatusCode?: number }) => exitFromStatus(result.StatusCode ?? -1),
          () => unknown, // the engine went away: nothing more will be learnt
        ),
  );
  return {
    child: { exited, kill: (signal) => container.kill({ signal }).catch(() => undefined) },
    running: start.then((spawnError) => spawnError === undefined),
  };
}

/** The text of a non-TTY container's log: frames of an 8-byte header (stream, size) and the bytes. */
function demuxLogs(buf: Buffer): string {
  let out = "";
  for (let at = 0; at + 8 <= buf.length;) {
    const size = buf.readUInt32BE(at + 4);
    out += buf.subarray(at + 8, at + 8 + size).toString();
    at += 8 + size;
  }
  return out;
}

function message(err: unknown): string {
  const e = err as { json?: { message?: string }; message?: string };
  return e.json?.message ?? e.message ?? String(err);
}
