import type { ChildProcess } from "node:child_process";
import { readFile } from "node:fs/promises";
import type { Server } from "node:net";
import { FennecError, toFennecError } from "../../../core/errors.js";
import type { InvokeRequest, InvokeResponse } from "../../../core/types.js";
import type { InvokeContext, SandboxHandle } from "../../contract.js";
import type { GuestChannel } from "../../guest-channel.js";
import { HttpTransport } from "../../http-transport.js";
import { removeRunDir } from "../../run-dir.js";
import { terminate } from "../../terminate.js";

const CLOSE_GRACE_MS = 3000;
const TAIL = 4096;

export interface QemuInstanceOptions {
  readonly child: ChildProcess;
  readonly dir: string;
  readonly what: string;
  readonly listener: Server | undefined;
  readonly consoleLog: string;
  readonly qmpSocket: string;
  readonly restored: boolean;
  readonly cleanup: ReadonlyArray<() => unknown>;
}

/** One QEMU VM: its process, run directory, channel or network transport. */
export class QemuInstance implements SandboxHandle {
  readonly #o: QemuInstanceOptions;
  readonly #exited: Promise<void>;
  readonly #exitListeners: Array<(reason: Error) => void> = [];
  #channel: GuestChannel | undefined;
  #transport: HttpTransport | undefined;
  #exitCode: number | null = null;
  #stderr = "";
  #stopping = false;
  #released: Promise<void> | undefined;
  readonly restored: boolean;

  constructor(o: QemuInstanceOptions) {
    this.#o = o;
    this.restored = o.restored;
    const keep = (chunk: Buffer) => (this.#stderr = (this.#stderr + chunk.toString()).slice(-TAIL));
    o.child.stdout?.on("data", keep);
    o.child.stderr?.on("data", keep);
    this.#exited = new Promise((resolve) => {
      o.child.once("exit", (code, signal) => {
        this.#exitCode = code ?? (signal ? 128 : -1);
        if (!this.#stopping) {
          void this.#exitError().then((err) => {
            for (const l of this.#exitListeners) l(err);
          });
        }
        resolve();
      });
      o.child.once("error", () => resolve());
    });
  }

  /** Where QEMU's monitor listens (a snapshot template's state is saved through it). */
  get qmpSocket(): string {
    return this.#o.qmpSocket;
  }

  attachChannel(channel: GuestChannel): void {
    this.#channel = channel;
    this.#transport = new HttpTransport({ connect: () => channel.openStream() }, this.#o.what);
  }

  attachTransport(transport: HttpTransport): void {
    this.#transport = transport;
  }

  /** What the guest last said: the channel's LOG frames (unikernel) or the console (Linux). */
  async #guestOutput(): Promise<string> {
    const console = await readFile(this.#o.consoleLog, "utf8").catch(() => "");
    return `${this.#channel?.log ?? ""}${console}`.trim().slice(-800);
  }

  async #exitError(): Promise<FennecError> {
    const out = await this.#guestOutput();
    const stderr = this.#stderr.trim().slice(-500);
    return new FennecError(
      "FN_CRASHED",
      `${this.#o.what}: the VM stopped (QEMU exit code ${this.#exitCode})` +
        `${out ? `; the guest's last output: ${out}` : ""}${stderr ? `; QEMU: ${stderr}` : ""}`,
    );
  }

  /**
   * The error to report for a start that failed: a kernel QEMU cannot load is the function's
   * artefact; a VM that stopped says what the guest and QEMU last wrote.
   */
  async startError(err: unknown): Promise<FennecError> {
    const e = toFennecError(err, "SANDBOX_START_FAILED");
    await Promise.race([this.#exited, new Promise((r) => setTimeout(r, 200))]);
    if (this.#exitCode === null || this.#stopping) return e;
    if (/kernel|PVH|multiboot|initrd/i.test(this.#stderr) && !this.restored) {
      return new FennecError(
        "FN_BAD_MODULE",
        `${this.#o.what}: QEMU could not boot it: ${this.#stderr.trim()}`,
      );
    }
    return e.code === "FN_INIT_TIMEOUT" ? e : this.#exitError();
  }

  onExit(listener: (reason: Error) => void): void {
    this.#exitListeners.push(listener);
  }

  async invoke(request: InvokeRequest, ctx: InvokeContext): Promise<InvokeResponse> {
    if (!this.#transport) throw new FennecError("INSTANCE_GONE", `${this.#o.what} is not ready`);
    try {
      return await this.#transport.invoke(request, ctx.signal);
    } catch (err) {
      if (err instanceof FennecError && err.code === "FN_CRASHED") {
        // The connection broke: if the VM is going down, report why it did.
        await Promise.race([this.#exited, new Promise((r) => setTimeout(r, 1000))]);
        if (this.#exitCode !== null && !this.#stopping) throw await this.#exitError();
      }
      throw err;
    }
  }

  /** Graceful: QEMU quits cleanly on SIGTERM; SIGKILL after a grace period. */
  async close(): Promise<void> {
    this.#stopping = true;
    await terminate((sig) => this.#signal(sig), this.#exited, CLOSE_GRACE_MS);
    await this.#release();
  }

  async destroy(): Promise<void> {
    this.#stopping = true;
    this.#signal("SIGKILL");
    await this.#exited;
    await this.#release();
  }

  #signal(sig: NodeJS.Signals): void {
    if (this.#exitCode !== null || this.#o.child.pid === undefined) return;
    try {
      // The whole group: QEMU runs helpers (the `exec:` migration's shell and cat) in it.
      process.kill(-this.#o.child.pid, sig);
    } catch {
      // already gone
    }
  }

  #release(): Promise<void> {
    this.#released ??= (async () => {
      this.#channel?.close();
      this.#transport?.close();
      this.#o.listener?.close();
      for (const release of this.#o.cleanup) await Promise.resolve(release()).catch(() => undefined);
      await removeRunDir(this.#o.dir);
    })();
    return this.#released;
  }
}
