import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import type { StartContext } from "./contract.js";
import { BINDING_SOCKET, type HostBinding } from "./host-binding.js";
import { INSIDE } from "./host-view.js";
import type { SupervisedChild } from "./supervised-child.js";
import { SupervisedHandle } from "./supervised-handle.js";
import { giveToSandboxUser } from "./unprivileged.js";

/**
 * The socket layout of a sandbox with no network of its own (isolated process, oci, container):
 * the function listens on `FENNEC_SOCKET` in a socket directory, the one host directory it may
 * write, bound at INSIDE.runDir; once ready, its socket is moved into the run directory, out of
 * its reach (`takeSocket`), and Fennec connects there.
 */

/** `FENNEC_SOCKET`: where the function listens, seen from inside the sandbox. */
export const SOCKET_INSIDE = join(INSIDE.runDir, "http.sock");

/** `FENNEC_HOST_SOCKET`: where the handler binding reaches Fennec, seen from inside (host-binding.ts). */
export const BINDING_INSIDE = join(INSIDE.runDir, BINDING_SOCKET);

/**
 * Makes the socket directory of the instance whose run directory is `dir` and hands it to the
 * sandbox user (the run directory around it, with what else the instance holds, stays root's).
 */
export async function createSocketDir(dir: string): Promise<string> {
  const socketDir = join(dir, "sock");
  await mkdir(socketDir);
  await giveToSandboxUser(socketDir);
  return socketDir;
}

/**
 * The handle of `child` once its socket in `socketDir` accepts, raced against its exit, the
 * start's deadline and `failsIf` (a port relay beside the sandbox dying); the socket is then
 * moved to `dir`, where the handle reaches it. `binding` is the instance's handler binding.
 */
export function readyOnSocket(
  child: SupervisedChild,
  dirs: { readonly dir: string; readonly socketDir: string; readonly binding?: HostBinding },
  ctx: Pick<StartContext, "signal" | "waitForCallback">,
  failsIf?: Promise<never>,
): Promise<SupervisedHandle> {
  const socketPath = join(dirs.dir, "http.sock");
  const readiness = {
    kind: "socket",
    path: join(dirs.socketDir, "http.sock"),
    takeTo: socketPath,
    failsIf,
  } as const;
  return SupervisedHandle.ready(child, { socketPath }, readiness, ctx, dirs.binding);
}
