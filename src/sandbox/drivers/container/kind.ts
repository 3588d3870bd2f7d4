import { readdir } from "node:fs/promises";
import { z } from "zod";
import { programConfig, programKeys, servedPort } from "../../../config/function-schema.js";
import type { ProgramConfig, ServedPortConfig } from "../../../config/function-schema.js";
import { toFennecError, type FennecError } from "../../../core/errors.js";
import { runRoot } from "../../run-dir.js";
import { built, type SandboxKind } from "../../kind.js";
import type { ContainerDriver } from "./driver.js";

/**
 * The UniFaaS `[container]` table, unchanged (`image`, `memory` as memory and swap limit, `runtime`
 * as named in /etc/docker/daemon.json), plus Fennec's keys: a fetch-style `handler` instead of an
 * image (`fennec build` makes the image), `env`, `pids` and `network`.
 */
const containerTable = z
  .strictObject({
    image: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$/, "a Docker image reference such as name:tag")
      .optional(),
    /** `memory` is also the memory+swap limit (no swap), as in UniFaaS. */
    ...programKeys({ memory: 128, pids: 1024 }),
    runtime: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, "a runtime name from /etc/docker/daemon.json")
      .optional(),
    /** `none`: no IP network (the socket transport only); `host`: the callback reaches the gateway. */
    network: z.enum(["none", "host"]).default("none"),
    port: servedPort,
  })
  .refine((c) => (c.image === undefined) !== (c.handler === undefined), {
    message: "expected exactly one of image or handler",
  })
  .refine((c) => c.port === undefined || (c.image !== undefined && c.network === "none"), {
    message:
      'port goes with image and network = "none": Fennec relays to it inside the container\'s own namespace',
    path: ["port"],
  });

/** With a `handler`, Fennec builds the image; `memoryMiB` is also the memory+swap limit (no swap). */
export interface ContainerSandboxConfig extends ProgramConfig, ServedPortConfig {
  readonly kind: "container";
  /** A Docker image already on the engine (imported or loaded: no registry is assumed). */
  readonly image: string | undefined;
  /** A runtime the engine knows (`runsc`); the engine's default (runc) when absent. */
  readonly runtime: string | undefined;
  readonly network: "none" | "host";
}

// Inside the block below, `ContainerSandboxConfig` would name the config layer's alias of this very entry.
type ThisKindConfig = ContainerSandboxConfig;
declare module "../../../config/function-config.js" {
  interface SandboxConfigs {
    container: ThisKindConfig;
  }
}

/** Per `fennec build` run (its driver): whether the engine answered, asked once, at the first function. */
const engineUp = new WeakMap<ContainerDriver, Promise<FennecError | undefined>>();

export const containerKind: SandboxKind<"container", typeof containerTable, ContainerDriver> = {
  kind: "container",
  schema: containerTable,
  toConfig: (c, files) => ({
    kind: "container",
    image: c.image,
    ...programConfig(c, files),
    runtime: c.runtime,
    network: c.network,
    port: c.port,
  }),
  code: (s) => [s.handler],
  // An image reference, not a path: it names an image on the engine.
  image: (c) => c.sandbox.image,
  async build(c, ctx) {
    const docker = await ctx.driver();
    let up = engineUp.get(docker);
    if (!up) {
      up = docker.engine.ping().then(
        () => undefined,
        (err: unknown) => toFennecError(err),
      );
      engineUp.set(docker, up);
    }
    const down = await up;
    if (!down) return built(`docker image ${await docker.buildImage(c, ctx.progress)}`);
    if (c.sandbox.handler) {
      const root = await docker.handlerRootfs(c, ctx.progress);
      return built(
        `root filesystem ${root.dir}; the image will be imported at first start, since ${down.message}`,
      );
    }
    return built(`image ${c.sandbox.image} not checked: ${down.message}`);
  },
  flags: [
    {
      name: "docker-host",
      type: "string",
      value: "SOCKET",
      help: `the Docker engine of [container] functions (default: DOCKER_HOST
if it is unix://..., else /var/run/docker.sock)`,
      build: true,
    },
  ],
  async create(node) {
    const { ContainerDriver } = await import("./driver.js");
    const host = node.settings["docker-host"];
    return new ContainerDriver(
      typeof host === "string" && host ? { socketPath: host.replace(/^unix:\/\//, "") } : {},
    );
  },
  // Every container Fennec starts has a run directory until it is removed: without one, a Fennec
  // that serves no container function has no reason to talk to (and load the client of) Docker.
  hasLeftovers: async () => (await readdir(runRoot("container")).catch(() => [])).length > 0,
};
