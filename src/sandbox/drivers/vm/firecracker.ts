import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants as fsConstants } from "node:fs";
import { copyFile, rm, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { connect, type Socket } from "node:net";
import { delimiter, isAbsolute, join } from "node:path";
import { FennecError, type ErrorCode } from "../../../core/errors.js";
import { waitForSocket } from "../../wait-socket.js";

/**
 * Firecracker driven through its documented REST API on a Unix socket
 * (`src/firecracker/swagger/firecracker.yaml`, `docs/api_requests/*`,
 * `docs/snapshotting/snapshot-support.md`, `docs/vsock.md` in firecracker-microvm/firecracker).
 *
 * The process runs with its working directory set to the instance's run directory, and every
 * per-instance file it is told about (the copied root drive, the vsock socket) is given by a
 * *relative* path. The snapshot documentation requires a restored microVM to find its disks and
 * vsock socket "at the same relative paths" as the original, so a snapshot taken in one run
 * directory restores in any other run directory that holds its own `rootfs.ext4`.
 */

const API_SOCKET = "firecracker.sock";
/** The root drive's name inside the run directory when it is copied there (UniFaaS `copy-rootfs`). */
export const ROOTFS_COPY = "rootfs.ext4";
/** The vsock device's host-side socket, relative to the run directory. */
export const VSOCK_SOCKET = "v.sock";
const ROOT_DRIVE_ID = "rootfs";
const NET_IFACE_ID = "eth0";
const OUTPUT_TAIL = 4096;
const API_SOCKET_TIMEOUT_MS = 5000;
const INSTALL_HINT =
  "download a release from https://github.com/firecracker-microvm/firecracker/releases and put " +
  "`firecracker` on PATH, or set FIRECRACKER_EXE to its path";

export interface FirecrackerStartOptions {
  /** Used for `--id` (Firecracker accepts letters, digits and hyphens, at most 64). */
  readonly id: string;
  /** An existing directory owned by this instance: API socket, copied rootfs, vsock socket. */
  readonly runDir: string;
  readonly vcpus: number;
  readonly memoryMiB: number;
  /** Boot a kernel (ignored when `restore` is given: a snapshot carries its own configuration). */
  readonly kernel?: string;
  readonly bootArgs?: string;
  readonly initrd?: string;
  /**
   * The root drive. `copy` (the default, UniFaaS `copy-rootfs`) gives the instance a private,
   * writable copy in its run directory (a reflink where the filesystem can); otherwise the image
   * is used in place, read-only unless `readOnly: false`.
   */
  readonly rootfs?: { readonly path: string; readonly copy?: boolean; readonly readOnly?: boolean };
  /** A tap that already exists (see taps.ts); attached as `eth0`. */
  readonly tap?: { readonly name: string; readonly mac?: string };
  /** A vsock device with this guest CID (≥ 3); its host side is `<runDir>/v.sock`. */
  readonly vsock?: { readonly guestCid: number };
  /** Firecracker's own log, written to `<runDir>/firecracker.log` at this level. */
  readonly logLevel?: "Error" | "Warning" | "Info" | "Debug" | "Trace" | "Off";
  /** Restore a full snapshot instead of booting (`PUT /snapshot/load`, resumed at once). */
  readonly restore?: { readonly snapshotPath: string; readonly memPath: string };
  /** Run the VMM inside this network namespace (`ip netns exec`), where its tap lives. */
  readonly netns?: string;
  readonly signal?: AbortSignal;
}

export interface FirecrackerExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** Where the Firecracker binary is: `FIRECRACKER_EXE`, else `firecracker` on PATH; a clear error if neither. */
export function findFirecracker(): string {
  const given = process.env["FIRECRACKER_EXE"];
  if (given) {
    if (executable(given)) return given;
    throw new FennecError(
      "SANDBOX_START_FAILED",
      `Firecracker is not installed: FIRECRACKER_EXE=${given} is not an executable file; ${INSTALL_HINT}`,
    );
  }
  for (const dir of (process.env["PATH"] ?? "").split(delimiter).filter(Boolean)) {
    const candidate = join(dir, "firecracker");
    if (executable(candidate)) return candidate;
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

function executable(path: string): boolean {
  try {
    accessSync(path, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** One microVM: its Firecracker process and the API on its socket. */
export class FirecrackerVm {
  readonly runDir: string;
  readonly apiSocket: string;
  /** Resolves when the process has exited (never rejects). */
  readonly exited: Promise<FirecrackerExit>;
  readonly #child: ChildProcess;
  readonly #rootfsCopy: string | undefined;
  #tail = "";
  readonly #outputListeners = new Set<(chunk: string) => void>();
  #state: "configuring" | "running" | "paused" = "configuring";
  #exit: FirecrackerExit | undefined;

  private constructor(child: ChildProcess, runDir: string, rootfsCopy: string | undefined) {
    this.#child = child;
    this.runDir = runDir;
    this.apiSocket = join(runDir, API_SOCKET);
    this.#rootfsCopy = rootfsCopy;
    const keep = (chunk: Buffer) => {
      const text = chunk.toString("utf8");
      this.#tail = (this.#tail + text).slice(-OUTPUT_TAIL);
      for (const listener of this.#outputListeners) listener(text);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    this.exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        this.#exit = { code, signal };
        resolve(this.#exit);
      });
      // A spawn failure (ENOENT, EACCES) emits only "error".
      child.once("error", (err) => {
        this.#tail += `\n${err.message}`;
        this.#exit ??= { code: null, signal: null };
        resolve(this.#exit);
      });
    });
  }

  get pid(): number | undefined {
    return this.#child.pid;
  }

  /** The last few KiB of the process's output: Firecracker's messages and the guest's serial console. */
  get output(): string {
    return this.#tail;
  }

  /** Every chunk of output from now on (the guest's serial console is Firecracker's stdout). */
  onOutput(listener: (chunk: string) => void): () => void {
    this.#outputListeners.add(listener);
    return () => this.#outputListeners.delete(listener);
  }

  /** Firecracker's own view of the instance (`GET /`): its id, state and version. */
  async info(): Promise<{ id: string; state: string; vmm_version: string }> {
    return (await this.#call("GET", "/")) as { id: string; state: string; vmm_version: string };
  }

  get state(): "configuring" | "running" | "paused" | "exited" {
    return this.#exit ? "exited" : this.#state;
  }

  /** The host side of the guest's vsock port `port` for connections the guest makes (`v.sock_<port>`). */
  vsockListenPath(port: number): string {
    return join(this.runDir, `${VSOCK_SOCKET}_${port}`);
  }

  /**
   * Starts Firecracker and either boots a kernel or restores a snapshot. On any failure the
   * process is killed, what was copied is removed, and a FennecError says what went wrong.
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
    const vm = new FirecrackerVm(child, opts.runDir, rootfsCopy);
    try {
      await vm.#waitForApi(opts.signal);
      if (opts.logLevel) {
        // Firecracker opens the log file (or FIFO) without creating it (docs/logger.md).
        await writeFile(join(opts.runDir, "firecracker.log"), "", { flag: "a" });
        await vm.#call("PUT", "/logger", { log_path: "firecracker.log", level: opts.logLevel }, "start");
      }
      if (opts.restore) await vm.#restore(opts);
      else await vm.#boot(opts);
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
    if (!opts.kernel) throw new FennecError("SANDBOX_START_FAILED", "Firecracker needs a kernel to boot");
    await this.#call(
      "PUT",
      "/machine-config",
      { vcpu_count: opts.vcpus, mem_size_mib: opts.memoryMiB },
      "start",
    );
    await this.#call(
      "PUT",
      "/boot-source",
      {
        kernel_image_path: opts.kernel,
        ...(opts.bootArgs === undefined ? {} : { boot_args: opts.bootArgs }),
        ...(opts.initrd === undefined ? {} : { initrd_path: opts.initrd }),
      },
      "start",
    );
    if (opts.rootfs) {
      const copied = opts.rootfs.copy !== false;
      await this.#call(
        "PUT",
        `/drives/${ROOT_DRIVE_ID}`,
        {
          drive_id: ROOT_DRIVE_ID,
          // Relative to the run directory (Firecracker's cwd), so a snapshot restores elsewhere.
          path_on_host: copied ? ROOTFS_COPY : opts.rootfs.path,
          is_root_device: true,
          is_read_only: opts.rootfs.readOnly ?? !copied,
        },
        "start",
      );
    }
    if (opts.tap) {
      await this.#call(
        "PUT",
        `/network-interfaces/${NET_IFACE_ID}`,
        {
          iface_id: NET_IFACE_ID,
          host_dev_name: opts.tap.name,
          ...(opts.tap.mac === undefined ? {} : { guest_mac: opts.tap.mac }),
        },
        "start",
      );
    }
    if (opts.vsock) {
      await this.#call("PUT", "/vsock", { guest_cid: opts.vsock.guestCid, uds_path: VSOCK_SOCKET }, "start");
    }
    await this.#call("PUT", "/actions", { action_type: "InstanceStart" }, "start");
    this.#state = "running";
  }

  async #restore(opts: FirecrackerStartOptions): Promise<void> {
    const restore = opts.restore!;
    await this.#call(
      "PUT",
      "/snapshot/load",
      {
        snapshot_path: restore.snapshotPath,
        mem_backend: { backend_type: "File", backend_path: restore.memPath },
        resume_vm: true,
        // The snapshot names the tap it was taken with; a clone gets its own.
        ...(opts.tap
          ? { network_overrides: [{ iface_id: NET_IFACE_ID, host_dev_name: opts.tap.name }] }
          : {}),
      },
      "start",
    );
    this.#state = "running";
  }

  /** Pauses the vCPUs (`PATCH /vm`). */
  async pause(): Promise<void> {
    await this.#call("PATCH", "/vm", { state: "Paused" });
    this.#state = "paused";
  }

  async resume(): Promise<void> {
    await this.#call("PATCH", "/vm", { state: "Resumed" });
    this.#state = "running";
  }

  /**
   * A full snapshot: the microVM state to `snapshotPath`, guest memory to `memPath`. Firecracker
   * requires a paused VM, so a running one is paused first; it stays paused unless `resume`
   * (resuming a snapshotted VM makes it and its clones share randomness: see snapshot-support.md).
   * The root drive is not part of the snapshot: a restore needs a `rootfs.ext4` in its run directory.
   */
  async createSnapshot(snapshotPath: string, memPath: string, resume = false): Promise<void> {
    if (this.#state !== "paused") await this.pause();
    await this.#call("PUT", "/snapshot/create", {
      snapshot_type: "Full",
      snapshot_path: absolute(this.runDir, snapshotPath),
      mem_file_path: absolute(this.runDir, memPath),
    });
    if (resume) await this.resume();
  }

  /**
   * Opens a connection to the guest's vsock port `port` (host-initiated, docs/vsock.md): connect
   * to `v.sock`, send `CONNECT <port>\n`, and the channel is up once Firecracker answers `OK ...\n`.
   * The socket comes back paused: `resume()` or `pipe()` it.
   */
  connectVsock(port: number, signal?: AbortSignal): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const socket = connect(join(this.runDir, VSOCK_SOCKET));
      let answer = "";
      const fail = (why: string) => {
        socket.destroy();
        reject(new FennecError("INSTANCE_GONE", `vsock port ${port}: ${why}`));
      };
      const onAbort = () => fail("aborted");
      const onError = (err: Error) => fail(err.message);
      // Firecracker closes the connection when nothing listens on the guest's port.
      const onClose = () => fail("closed before the handshake (is the guest listening?)");
      const onData = (chunk: Buffer) => {
        answer += chunk.toString("latin1");
        const eol = answer.indexOf("\n");
        if (eol < 0)
          return answer.length > 64 ? fail(`unexpected answer ${JSON.stringify(answer)}`) : undefined;
        socket.off("data", onData).off("error", onError).off("close", onClose);
        signal?.removeEventListener("abort", onAbort);
        if (!answer.startsWith("OK "))
          return fail(`unexpected answer ${JSON.stringify(answer.slice(0, eol))}`);
        // Paused, so nothing the guest sends right after the handshake is lost before the caller reads.
        socket.pause();
        const rest = Buffer.from(answer.slice(eol + 1), "latin1");
        if (rest.length > 0) socket.unshift(rest);
        resolve(socket);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      socket.once("connect", () => socket.write(`CONNECT ${port}\n`));
      socket.on("data", onData).on("error", onError).on("close", onClose);
    });
  }

  /**
   * Kills the process (SIGKILL to its group), waits for it, and removes the copied root drive and
   * the sockets. Idempotent; the run directory itself is the caller's.
   */
  async kill(): Promise<void> {
    const pid = this.#child.pid;
    if (!this.#exit && pid !== undefined) {
      try {
        process.kill(-pid, "SIGKILL");
      } catch {
        this.#child.kill("SIGKILL");
      }
    }
    await this.exited;
    await Promise.all(
      [this.apiSocket, join(this.runDir, VSOCK_SOCKET), this.#rootfsCopy]
        .filter((p): p is string => p !== undefined)
        .map((p) => rm(p, { force: true })),
    );
  }

  /** One API request; a fault (4xx/5xx with `fault_message`) becomes a FennecError. */
  #call(
    method: "GET" | "PUT" | "PATCH",
    path: string,
    body?: unknown,
    phase: "start" | "run" = "run",
  ): Promise<unknown> {
    const code: ErrorCode = phase === "start" ? "SANDBOX_START_FAILED" : "INTERNAL";
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = request(
        {
          socketPath: this.apiSocket,
          method,
          path,
          host: "localhost",
          headers: {
            Accept: "application/json",
            ...(payload ? { "Content-Type": "application/json", "Content-Length": payload.length } : {}),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            let parsed: unknown = undefined;
            try {
              parsed = text ? JSON.parse(text) : undefined;
            } catch {
              parsed = text;
            }
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) return resolve(parsed);
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
    const tail = this.#tail.trim();
    return tail ? `${message}; its output ends with:\n${tail.slice(-1024)}` : message;
  }
}

function sanitizeId(id: string): string {
  return id.replace(/[^A-Za-z0-9-]/g, "-").slice(0, 64) || "fennec";
}

function absolute(base: string, path: string): string {
  return isAbsolute(path) ? path : join(base, path);
}

function describeExit(exit: FirecrackerExit): string {
  return exit.signal ? `signal ${exit.signal}` : `code ${exit.code}`;
}
