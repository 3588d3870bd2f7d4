import { request } from "node:http";
import type { FunctionConfig } from "../config/function-config.js";
import { toFennecError } from "../core/errors.js";
import { findExecutable } from "../sandbox/host-view.js";

/**
 * The sandboxes of a cluster by one vocabulary: what a function needs (`sandboxOf`) and what a node
 * can run (`probeSandboxes`, published in its `NodeInfo`), so placement sends a function only to
 * nodes that have its sandbox. A name is a kind, then what inside the kind needs a different host:
 *
 * | name                   | a function with                                 | a node needs                      |
 * |------------------------|-------------------------------------------------|-----------------------------------|
 * | `wasm`                 | `[wasm]`                                        | nothing (in-process)              |
 * | `process`              | `[process]`                                     | `--process`                       |
 * | `process/isolated`     | `[process] isolate = true`                      | `--process`, bwrap, setpriv       |
 * | `oci/runc`, `oci/runsc`| `[oci] runtime = ...`                           | that binary                       |
 * | `container`            | `[container]` without `runtime`                 | a Docker engine that answers      |
 * | `container/<runtime>`  | `[container] runtime = "<runtime>"`             | ... with that runtime configured  |
 * | `vm/qemu`              | `[vm]` handler or command on QEMU               | QEMU and Fennec's guest kernel    |
 * | `vm/qemu-image`        | `[vm]` kernel and image of its own on QEMU      | QEMU                              |
 * | `vm/unikernel`         | `[vm]` a kernel alone (a unikernel) on QEMU     | QEMU                              |
 * | `vm/firecracker`       | `[vm]` kernel and image of its own, Firecracker | Firecracker and a usable /dev/kvm |
 * | `vm/firecracker-guest` | `[vm]` a command on Firecracker                 | ... and Fennec's guest kernel     |
 *
 * A kind this table does not know (a test's stand-in driver) is its own name, there when its
 * driver is.
 */
export function sandboxOf(config: FunctionConfig): string {
  const s = config.sandbox;
  switch (s.kind) {
    case "wasm":
      return "wasm";
    case "process":
      return s.isolate ? "process/isolated" : "process";
    case "oci":
      return `oci/${s.runtime}`;
    case "container":
      return s.runtime === undefined ? "container" : `container/${s.runtime}`;
    case "vm": {
      const ownKernel = s.kernel !== undefined;
      if (s.hypervisor.type === "firecracker") return ownKernel ? "vm/firecracker" : "vm/firecracker-guest";
      if (!ownKernel) return "vm/qemu";
      return s.image === undefined ? "vm/unikernel" : "vm/qemu-image";
    }
    default:
      return (s as { kind: string }).kind;
  }
}

/** What a node can run, and why not the rest (`NodeInfo.sandboxes`, `NodeInfo.missing`). */
export interface SandboxReport {
  readonly sandboxes: readonly string[];
  readonly missing: Readonly<Record<string, string>>;
}

/** A Docker runtime as the engine's `GET /info` lists it. */
interface DockerRuntime {
  readonly path?: string;
  readonly runtimeArgs?: readonly string[];
}

/** What the host has, asked of it (the real one by default; a unit test gives its own). */
export interface HostProbe {
  /** Why `name` cannot be run (not installed, with the package), or undefined when it can. */
  executable(name: string, debianPackage: string): string | undefined;
  /** Why Firecracker cannot run here, or undefined. */
  firecracker(): Promise<string | undefined>;
  /** Why Fennec's guest kernel is not there (`fennec build --guest-kernel`), or undefined. */
  guestKernel(): Promise<string | undefined>;
  /** The engine's runtimes, or why it cannot be reached. */
  docker(socketPath: string): Promise<{ runtimes: Record<string, DockerRuntime> } | { error: string }>;
}

const QEMU = { binary: "qemu-system-x86_64", package: "qemu-system-x86" };

/**
 * Which sandboxes this node's drivers can run, from the drivers `main.ts` created (a kind left
 * off, as `[process]` without `--process`, has none) and what each needs of the host. Cheap
 * enough to run again now and then (membership does: a Docker engine may come up later), and it
 * loads no driver's dependencies (the Docker engine is asked over its socket directly).
 */
export async function probeSandboxes(
  drivers: ReadonlyMap<string, unknown>,
  opts: { readonly enableHint?: (kind: string) => string | undefined; readonly host?: HostProbe } = {},
): Promise<SandboxReport> {
  const host = opts.host ?? realHost;
  const sandboxes: string[] = [];
  const missing: Record<string, string> = {};
  const verdict = (name: string, why: string | undefined) => {
    if (why === undefined) sandboxes.push(name);
    else missing[name] = why;
  };
  const off = (kind: string) => opts.enableHint?.(kind) ?? `no "${kind}" sandbox driver on this node`;
  const known = new Set(["wasm", "process", "oci", "container", "vm"]);

  verdict("wasm", drivers.has("wasm") ? undefined : off("wasm"));

  if (!drivers.has("process")) {
    verdict("process", off("process"));
    verdict("process/isolated", off("process"));
  } else {
    verdict("process", undefined);
    verdict(
      "process/isolated",
      host.executable("bwrap", "bubblewrap") ?? host.executable("setpriv", "util-linux"),
    );
  }

  for (const runtime of ["runc", "runsc"])
    verdict(`oci/${runtime}`, drivers.has("oci") ? host.executable(runtime, runtime) : off("oci"));

  const container = drivers.get("container");
  if (!container) {
    verdict("container", off("container"));
    verdict("container/runsc", off("container"));
  } else {
    const socketPath = (container as { engine?: { socketPath?: unknown } }).engine?.socketPath;
    const engine = await host.docker(typeof socketPath === "string" ? socketPath : "/var/run/docker.sock");
    if ("error" in engine) {
      verdict("container", engine.error);
      verdict("container/runsc", engine.error);
    } else {
      verdict("container", undefined);
      for (const [name, runtime] of Object.entries(engine.runtimes))
        verdict(`container/${name}`, gvisorWithoutSeccomp(name, runtime));
      if (!("runsc" in engine.runtimes))
        verdict(
          "container/runsc",
          `the Docker engine has no runtime "runsc" (it has: ${Object.keys(engine.runtimes).join(", ") || "none"})`,
        );
    }
  }

  if (!drivers.has("vm")) {
    for (const name of VM_NAMES) verdict(name, off("vm"));
  } else {
    const qemu = host.executable(QEMU.binary, QEMU.package);
    const kernel = await host.guestKernel();
    const firecracker = await host.firecracker();
    verdict("vm/qemu", qemu ?? kernel);
    verdict("vm/qemu-image", qemu);
    verdict("vm/unikernel", qemu);
    verdict("vm/firecracker", firecracker);
    verdict("vm/firecracker-guest", firecracker ?? kernel);
  }

  // A kind the table does not know (a stand-in driver) runs wherever its driver is.
  for (const kind of drivers.keys()) if (!known.has(kind)) verdict(kind, undefined);
  return { sandboxes, missing };
}

const VM_NAMES = ["vm/qemu", "vm/qemu-image", "vm/unikernel", "vm/firecracker", "vm/firecracker-guest"];

/** As the container driver refuses it (engine.ts): gVisor that would ignore Docker's seccomp profile. */
function gvisorWithoutSeccomp(name: string, runtime: DockerRuntime): string | undefined {
  const binary = (runtime.path ?? name).split("/").pop();
  if (binary !== "runsc" || runtime.runtimeArgs?.includes("--oci-seccomp")) return undefined;
  return `the Docker engine's runtime "${name}" is gVisor without --oci-seccomp`;
}

const realHost: HostProbe = {
  executable(name, debianPackage) {
    try {
      findExecutable(name, debianPackage);
      return undefined;
    } catch (err) {
      return toFennecError(err).message;
    }
  },
  // Loaded here: the vm driver's modules are not needed by a node that only asks.
  async firecracker() {
    const { firecrackerUnavailable } = await import("../sandbox/drivers/vm/firecracker.js");
    return firecrackerUnavailable();
  },
  async guestKernel() {
    const { guestKernel } = await import("../sandbox/drivers/vm/linux-guest.js");
    try {
      guestKernel();
      return undefined;
    } catch (err) {
      return toFennecError(err).message;
    }
  },
  docker: dockerRuntimes,
};

/** The Docker engine's runtimes (`GET /info` on its socket), or why it does not answer within 3 s. */
function dockerRuntimes(
  socketPath: string,
): Promise<{ runtimes: Record<string, DockerRuntime> } | { error: string }> {
  const down = (why: string) => ({
    error: `the Docker engine at unix://${socketPath} cannot be reached (${why})`,
  });
  return new Promise((resolve) => {
    const req = request({ socketPath, path: "/info", timeout: 3_000 }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (text += chunk));
      res.on("end", () => {
        if (res.statusCode !== 200) return resolve(down(`HTTP ${res.statusCode}`));
        try {
          const info = JSON.parse(text) as { Runtimes?: Record<string, DockerRuntime> };
          resolve({ runtimes: info.Runtimes ?? {} });
        } catch {
          resolve(down("its /info is not JSON"));
        }
      });
      res.on("error", (err) => resolve(down(err.message)));
    });
    req.on("timeout", () => req.destroy(new Error("no answer within 3 s")));
    req.on("error", (err: NodeJS.ErrnoException) => resolve(down(err.code ?? err.message)));
    req.end();
  });
}
