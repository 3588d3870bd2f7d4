import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { FennecError } from "../../../core/errors.js";
import type { OciSandboxConfig } from "../../../config/function-config.js";
import { INSIDE } from "../../host-view.js";
import { PortForwarder, type RelayPlace } from "../../port-forwarder.js";
import { nodeInside } from "../../rootfs-build.js";
import { SANDBOX_USER } from "../../unprivileged.js";

const run = promisify(execFile);

export interface OciPortOptions {
  readonly runtime: OciSandboxConfig["runtime"];
  readonly binary: string;
  readonly runtimeArgs: readonly string[];
  readonly id: string;
  /** The instance's socket directory on the host (INSIDE.runDir in the container). */
  readonly socketDir: string;
  readonly port: number;
  readonly what: string;
  readonly signal: AbortSignal;
}

/**
 * For an `[oci]` function with `port`: a relay from `<socketDir>/http.sock` to the port in the
 * container's own network namespace, started once the runtime reports the container (see
 * PortForwarder for where it runs under runc and under runsc).
 */
export function forwardOciPort(o: OciPortOptions): PortForwarder {
  const forwarder = new PortForwarder({ port: o.port, what: o.what });
  forwarder.start((stopped) => placeOf(o, AbortSignal.any([o.signal, stopped])));
  return forwarder;
}

async function placeOf(o: OciPortOptions, signal: AbortSignal): Promise<RelayPlace> {
  const state = await containerState(o, signal);
  if (o.runtime === "runc")
    return { kind: "netns", pid: state.pid, socketPath: join(o.socketDir, "http.sock") };
  return {
    kind: "exec",
    argv: [o.binary, ...o.runtimeArgs, "exec", "--user", `${SANDBOX_USER.uid}:${SANDBOX_USER.gid}`],
    id: o.id,
    // A command's root has the host's program directories, a handler's its built copy of Node.
    node: await nodeInside(),
    socketPath: join(INSIDE.runDir, "http.sock"),
  };
}

/**
 * Waits for the container `run` is making to be running (its init's PID known, its namespaces
 * made): `run` runs in the foreground, so only `state` says when, polled every 10 ms.
 */
async function containerState(o: OciPortOptions, signal: AbortSignal): Promise<{ pid: number }> {
  for (;;) {
    if (signal.aborted) throw signal.reason;
    const state = await run(o.binary, [...o.runtimeArgs, "state", o.id]).then(
      (r) => JSON.parse(r.stdout) as { pid?: number; status?: string },
      () => undefined,
    );
    if (state?.status === "running" && state.pid) return { pid: state.pid };
    if (state?.status === "stopped")
      throw new FennecError("FN_CRASHED", `${o.what} stopped before its port could be reached`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
