import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants as fsConstants } from "node:fs";
import { copyFile, rm } from "node:fs/promises";
import { request } from "node:http";
import { delimiter, join } from "node:path";
import { FennecError, type ErrorCode } from "../../../core/errors.js";
import type { CleanupStack } from "../../cleanup-stack.js";
import { isExecutable } from "../../host-view.js";
import { fromChildProcess, SupervisedChild, type ChildExit } from "../../supervised-child.js";
import { waitForSocket } from "../../wait-socket.js";

/**
 * Firecracker driven through its documented REST API on a Unix socket
 * (`src/firecracker/swagger/firecracker.yaml`, `docs/api_requests/*` in
 * firecracker-microvm/firecracker): what the vm driver boots, and nothing more. Snapshots and
 * vsock are left out on purpose: Fennec reaches a Firecracker guest over its tap, and a restored
 * clone would wake up with the template's address on the template's /30 (docs/architecture.md).
 *
 * The process runs with its working directory set to the instance's run directory, where the
 * root drive is copied (UniFaaS `copy-rootfs`) and named by a relative path.
 */

const API_SOCKET = "firecracker.sock";
/** The root drive's name inside the run directory when it is copied there (UniFaaS `copy-rootfs`). */
const ROOTFS_COPY = "rootfs.ext4";
const ROOT_DRIVE_ID = "rootfs";
const NET_IFACE_ID = "eth0";
const API_SOCKET_TIMEOUT_MS = 5000;
const INSTALL_HINT =
  "download a release from https://github.com/firecracker-microvm/firecracker/releases and put " +
  "`firecracker` on PATH, or set FIRECRACKER_EXE to its path";

export interface FirecrackerStartOptions {
  /** Used for `--id` (Firecracker accepts letters, digits and hyphens, at most 64). */
  readonly id: string;
  /** An existing directory owned by this instance: API socket, copied rootfs. */
  readonly runDir: string;
  readonly vcpus: number;
  readonly memoryMiB: number;
  readonly kernel: string;
  readonly bootArgs?: string;
  readonly initrd?: string;
  /**
   * The root drive. `copy` (the default, UniFaaS `copy-rootfs`) gives the instance a private,
   * writable copy in its run directory (a reflink where the filesystem can); otherwise the image
   * is used in place, read-only.
   */
  readonly rootfs?: { readonly path: string; readonly copy?: boolean };
  /** A tap that already exists (see taps.ts); attached as `eth0`. */
  readonly tap?: { readonly name: string; readonly mac?: string };
  /** Run the VMM inside this network namespace (`ip netns exec`), where its tap lives. */
  readonly netns?: string;
  readonly signal?: AbortSignal;
  /** Names the instance in messages (default `Firecracker <id>`). */
  readonly what?: string;
  /** What the caller holds for this microVM, released with it (see supervised-child.ts). */
  readonly cleanup?: CleanupStack;
}

/** Where the Firecracker binary is: `FIRECRACKER_EXE`, else `firecracker` on PATH; a clear error if neither. */
export function findFirecracker(): string {
  const given = process.env["FIRECRACKER_EXE"];
  if (given) {
    if (isExecutable(given)) return given;
    throw new FennecError(
      "SANDBOX_START_FAILED",
      `Firecracker is not installed: FIRECRACKER_EXE=${given} is not an executable file; ${INSTALL_HINT}`,
    );
  }
  for (const dir of (process.env["PATH"] ?? "").split(delimiter).filter(Boolean)) {
    const candidate = join(dir, "firecracker");
    if (isExecutable(candidate)) return candidate;
  }
  throw new FennecError(
    "SANDBOX_START_FAILED",
    `Firecracker is not installed: no \`firecracker\` on PATH; ${INSTALL_HINT}`,
  );
}

/** Why Firecracker cannot run here (no binary, no usable /dev/kvm), or undefined when it can. */
export function firecrackerUnavailable(): string | undefined {
  try {
    findFirecracker();
  } catch (err) {
    return (err as Error).message;
  }
  try {
    accessSync("/dev/kvm", fsConstants.R_OK | fsConstants.W_OK);
  } catch {
    return "Firecracker needs KVM: /dev/kvm is missing or not readable and writable by this user";
  }
  return undefined;
}

/** One microVM: its Firecracker process, supervised, and the API on its socket. */
export class FirecrackerVm {
  readonly apiSocket: string;
  /** The VMM under supervision: its exit, its output (the guest's serial console), its stops. */
  readonly child: SupervisedChild;
  readonly #pid: number | undefined;
  #exit: ChildExit | undefined;

  private constructor(spawned: ChildProcess, opts: FirecrackerStartOptions, rootfsCopy: string | undefined) {
    this.apiSocket = join(opts.runDir, API_SOCKET);
    this.#pid = spawned.pid;
    this.child = new SupervisedChild({
      child: fromChildProcess(spawned, { group: true }),
      what: opts.what ?? `Firecracker ${opts.id}`,
      ...(opts.cleanup ? { cleanup: opts.cleanup } : {}),
    });
    // Run first of the stack, once the VMM is gone: the run directory itself is the caller's.
    const apiSocket = this.apiSocket;
    this.child.cleanup.defer(() =>
      Promise.all([apiSocket, rootfsCopy].filter((p) => p !== undefined).map((p) => rm(p, { force: true }))),
    );
    void this.child.exited.then((exit) => (this.#exit = exit));
  }

  get pid(): number | undefined {
    return this.#pid;
  }

  /** Resolves when the process has exited (never rejects). */
  get exited(): Promise<ChildExit> {
    return this.child.exited;
  }

  /** The last few KiB of the process's output: Firecracker's messages and the guest's serial console. */
  get output(): string {
    return this.child.output;
  }

  /**
   * Starts Firecracker and boots the kernel. On any failure the process is killed, what was
   * copied is removed, and a FennecError says what went wrong.
   */
  static async start(opts: FirecrackerStartOptions): Promise<FirecrackerVm> {
    const binary = findFirecracker();
    const apiSocket = join(opts.runDir, API_SOCKET);
    // Firecracker refuses to bind an API socket path that already exists.
    await rm(apiSocket, { force: true });
    let rootfsCopy: string | undefined;
    if (opts.rootfs && opts.rootfs.copy !== false) {
      rootfsCopy = join(opts.runDir, ROOTFS_COPY);
      try {
        // FICLONE: a reflink (instant, shared blocks) where the filesystem can, else a plain copy.
        await copyFile(opts.rootfs.path, rootfsCopy, fsConstants.COPYFILE_FICLONE);
      } catch (err) {
        throw new FennecError(
          "SANDBOX_START_FAILED",
          `cannot copy the root drive: ${(err as Error).message}`,
          {
            cause: err,
          },
        );
      }
    }
    const args = ["--api-sock", apiSocket, "--id", sanitizeId(opts.id)];
    const argv = opts.netns ? ["ip", ["netns", "exec", opts.netns, binary, ...args]] : [binary, args];
    const child = spawn(argv[0] as string, argv[1] as string[], {
      cwd: opts.runDir,
      stdio: ["ignore", "pipe", "pipe"],
      // Its own process group: kill() reaches anything it forked (`ip netns exec` execs in place).
      detached: true,
    });
    const vm = new FirecrackerVm(child, opts, rootfsCopy);
    try {
      await vm.#waitForApi(opts.signal);
      await vm.#boot(opts);
      return vm;
    } catch (err) {
      await vm.kill();
      throw err;
    }
  }

  async #waitForApi(signal: AbortSignal | undefined): Promise<void> {
    const ac = new AbortController();
    const onAbort = () => ac.abort(signal?.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    const timer = setTimeout(() => ac.abort(new Error("timeout")), API_SOCKET_TIMEOUT_MS);
    void this.exited.then(() => ac.abort(new Error("exited")));
    try {
      await waitForSocket(this.apiSocket, ac.signal);
    } catch (err) {
      if (signal?.aborted) throw err;
      const why = this.#exit
        ? `Firecracker exited (${describeExit(this.#exit)}) before opening its API socket`
        : `Firecracker did not open its API socket within ${API_SOCKET_TIMEOUT_MS} ms`;
      throw new FennecError("SANDBOX_START_FAILED", this.#withOutput(why));
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
  }

  async #boot(opts: FirecrackerStartOptions): Promise<void> {
    await this.#put("/machine-config", { vcpu_count: opts.vcpus, mem_size_mib: opts.memoryMiB });
    await this.#put("/boot-source", {
      kernel_image_path: opts.kernel,
      ...(opts.bootArgs === undefined ? {} : { boot_args: opts.bootArgs }),
      ...(opts.initrd === undefined ? {} : { initrd_path: opts.initrd }),
    });
    if (opts.rootfs) {
      const copied = opts.rootfs.copy !== false;
      await this.#put(`/drives/${ROOT_DRIVE_ID}`, {
        drive_id: ROOT_DRIVE_ID,
        // Relative to the run directory, Firecracker's working directory.
        path_on_host: copied ? ROOTFS_COPY : opts.rootfs.path,
        is_root_device: true,
        is_read_only: !copied,
      });
    }
    if (opts.tap) {
      await this.#put(`/network-interfaces/${NET_IFACE_ID}`, {
        iface_id: NET_IFACE_ID,
        host_dev_name: opts.tap.name,
        ...(opts.tap.mac === undefined ? {} : { guest_mac: opts.tap.mac }),
      });
    }
    await this.#put("/actions", { action_type: "InstanceStart" });
  }

  /**
   * Kills the process (SIGKILL to its group), waits for it, and runs its cleanup: the copied root
   * drive and the API socket, then whatever the caller deferred. Idempotent.
   */
  kill(): Promise<void> {
    return this.child.destroy();
  }

  /** One API request of the boot; a fault (4xx/5xx with `fault_message`) fails the start. */
  #put(path: string, body: unknown): Promise<void> {
    const method = "PUT";
    const code: ErrorCode = "SANDBOX_START_FAILED";
    const payload = Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = request(
        {
          socketPath: this.apiSocket,
          method,
          path,
          host: "localhost",
          headers: {
            Accept: "application/json",
            "Content-Type": "application/json",
            "Content-Length": payload.length,
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) return resolve();
            let parsed: unknown = undefined;
            try {
              parsed = text ? JSON.parse(text) : undefined;
            } catch {
              parsed = text;
            }
            const fault =
              parsed && typeof parsed === "object" && "fault_message" in parsed
                ? String(parsed.fault_message)
                : text || "(no message)";
            reject(
              new FennecError(code, `Firecracker ${method} ${path} failed (${status}): ${fault}`, {
                details: { status, path, fault },
              }),
            );
          });
        },
      );
      req.on("error", (err) => {
        const why = this.#exit ? `Firecracker exited (${describeExit(this.#exit)})` : err.message;
        reject(
          new FennecError(code, this.#withOutput(`Firecracker ${method} ${path}: ${why}`), { cause: err }),
        );
      });
      req.end(payload);
    });
  }

  #withOutput(message: string): string {
    const tail = this.output.trim();
    return tail ? `${message}; its output ends with:\n${tail.slice(-1024)}` : message;
  }
}

function sanitizeId(id: string): string {
  return id.replace(/[^A-Za-z0-9-]/g, "-").slice(0, 64) || "fennec";
}

function describeExit(exit: ChildExit): string {
  if (exit.spawnError) return `it could not be run: ${exit.spawnError.message}`;
  return exit.signal ? `signal ${exit.signal}` : `code ${exit.exitCode}`;
}
