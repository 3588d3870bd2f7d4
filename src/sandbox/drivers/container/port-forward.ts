import { join } from "node:path";
import type Docker from "dockerode";
import { FennecError } from "../../../core/errors.js";
import { INSIDE } from "../../host-view.js";
import { PortForwarder } from "../../port-forwarder.js";

/**
 * For a `[container]` with `port`, once Docker has started it: a relay from
 * `<socketDir>/http.sock` to the port in the container's own network namespace (`network =
 * "none"`: its loopback only). Under runc a host process in the namespace of the container's init
 * (Docker's `State.Pid`); under gVisor a process in the container, through the Engine API's exec,
 * running the image's `node` (see PortForwarder).
 */
export function forwardContainerPort(o: {
  readonly container: Docker.Container;
  readonly gvisor: boolean;
  readonly socketDir: string;
  readonly port: number;
  readonly what: string;
}): PortForwarder {
  const forwarder = new PortForwarder({ port: o.port, what: o.what });
  forwarder.start(() =>
    o.gvisor
      ? Promise.resolve({
          kind: "docker",
          container: o.container,
          node: "node",
          socketPath: join(INSIDE.runDir, "http.sock"),
        })
      : o.container.inspect().then(({ State }) => {
          if (!State.Running || !State.Pid)
            throw new FennecError("FN_CRASHED", `${o.what} stopped before its port could be reached`);
          return { kind: "netns", pid: State.Pid, socketPath: join(o.socketDir, "http.sock") };
        }),
  );
  return forwarder;
}
