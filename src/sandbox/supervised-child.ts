import type { ChildProcess } from "node:child_process";
import { constants } from "node:os";
import type { Readable } from "node:stream";
import { FennecError, type ExitDetails } from "../core/errors.js";
import type { InstanceLog } from "./call-log.js";
import { CleanupStack } from "./cleanup-stack.js";
import { terminate } from "./terminate.js";

/**
 * How long a broken connection waits for its child's exit before the transport's own error stands,
 * the same for every driver. The wait ends the moment the exit is seen, so a generous bound costs
 * nothing when the child is dying; it only delays the error of a connection the instance broke
 * while living on, which is rare. Generous because a runtime reports a container's exit through
 * its own process or API, well after the socket closed: runsc under Docker took 1.1 to 1.5 s on
 * this 2-core host with other tests running (1 s lost the exit code and the OOM kill).
 */
export const RECLASSIFY_MS = 5000;
/** How long a closing child gets after SIGTERM before SIGKILL. */
const CLOSE_GRACE_MS = 3000;
/** The output kept for error messages: the last 4 KiB, of which a message quotes the last 500 characters. */
const TAIL_BYTES = 4096;
const QUOTED_CHARS = 500;

/**
 * How a child ended. `exitCode` follows the shell's convention, 128 + n for signal n, for every
 * kind of child: it is how runc and Docker report a container a signal ended, so one number means
 * the same for a process, a container and a VM (SIGKILL is 137 everywhere).
 */
export interface ChildExit {
  readonly exitCode: number;
  readonly signal: NodeJS.Signals | null;
  /** It never ran: spawning it (or starting its container) failed. */
  readonly spawnError?: Error;
}

/** Node's `exit` event arguments (`code` or `signal`) as a ChildExit. */
export function exitOf(code: number | null, signal: NodeJS.Signals | null): ChildExit {
  if (signal) return { exitCode: 128 + (constants.signals[signal] ?? 0), signal };
  return { exitCode: code ?? -1, signal: null };
}

/** A runtime's exit status (runc, Docker), where a status above 128 names the signal that ended it. */
export function exitFromStatus(status: number): ChildExit {
  const number = status - 128;
  const name = Object.entries(constants.signals).find(([, n]) => n === number)?.[0];
  return { exitCode: status, signal: status > 128 && name ? (name as NodeJS.Signals) : null };
}

/**
 * What supervision needs of a sandbox's process: how it ends and how to signal it. A direct child
 * is adapted by `fromChildProcess`; a container a daemon or runtime runs by its driver.
 */
export interface Child {
  /** Resolves once, when it has exited or failed to spawn; never rejects. */
  readonly exited: Promise<ChildExit>;
  /** Delivers a signal its way (a process group, a runtime's `kill`); a gone child is no error. */
  kill(signal: "SIGTERM" | "SIGKILL"): unknown;
  /** Streams whose last bytes are kept for error messages. */
  readonly output?: ReadonlyArray<Readable | null | undefined>;
}

/** How to signal a ChildProcess and read its exit. */
export interface ChildProcessOptions {
  /** Signal its whole process group (it was spawned `detached`), so what it started stops with it. */
  readonly group?: boolean;
  /** Signal it another way (a runtime's `kill`); `direct` signals the process itself. */
  readonly kill?: (sig: "SIGTERM" | "SIGKILL", direct: (sig: NodeJS.Signals) => void) => unknown;
  /** It is a runtime (`runc run`) whose exit status is its container's: 128 + n names signal n. */
  readonly statusNamesSignal?: boolean;
}

/**
 * A spawned ChildProcess as a Child. It is never signalled once it has exited: its PID may be
 * another process's by then.
 */
export function fromChildProcess(child: ChildProcess, opts: ChildProcessOptions = {}): Child {
  let gone = false;
  const exited = new Promise<ChildExit>((resolve) => {
    child.once("exit", (code, signal) => {
      gone = true;
      resolve(opts.statusNamesSignal && code !== null ? exitFromStatus(code) : exitOf(code, signal));
    });
    child.on("error", (err) => {
      // Only a spawn failure leaves no PID; a failed kill leaves the child running.
      if (child.pid !== undefined) return;
      gone = true;
      resolve({ exitCode: -1, signal: null, spawnError: err });
    });
  });
  const direct = (sig: NodeJS.Signals) => {
    if (gone || child.pid === undefined) return;
    try {
      if (opts.group) process.kill(-child.pid, sig);
      else child.kill(sig);
    } catch {
      // gone meanwhile
    }
  };
  return {
    exited,
    kill: (sig) => (gone ? undefined : opts.kill ? opts.kill(sig, direct) : direct(sig)),
    output: [child.stdout, child.stderr],
  };
}

export interface SupervisedChildOptions {
  readonly child: Child;
  /** Names the instance in messages, e.g. `default/echo: instance c1 (runc)`. */
  readonly what: string;
  /** The function's memory limit, for the FN_OOM message. */
  readonly memoryMiB?: number;
  /** Whether the kernel killed it for memory (a cgroup's oom_kill count, Docker's OOMKilled). */
  readonly oomKilled?: (exit: ChildExit) => boolean | Promise<boolean>;
  /** What it said beyond its own streams (a container's log, a guest's console), read after it exits. */
  readonly moreOutput?: () => Promise<string>;
  /** Where its output goes as function logs: `child.output`'s first stream is stdout, the second stderr. */
  readonly log?: InstanceLog | undefined;
  /** Its resources' releases, run once after it has exited, however it stopped. */
  readonly cleanup?: CleanupStack;
  readonly graceMs?: number;
}

/**
 * One sandbox process under supervision, what every out-of-process driver shares: its exit and the
 * tail of its output, listeners for it dying on its own, that exit told apart as OOM, crash or
 * signal (with `exitCode` and `signal` in the error's details), a stop of SIGTERM then SIGKILL after
 * a grace, and its cleanup run exactly once. Readiness is raced in `await-ready.ts`.
 */
export class SupervisedChild {
  readonly what: string;
  readonly cleanup: CleanupStack;
  /** Resolves once the child has exited (or never started). */
  readonly exited: Promise<ChildExit>;
  readonly #o: SupervisedChildOptions;
  #tail = Buffer.alloc(0);
  #stopping = false;
  #stopped: Promise<void> | undefined;
  #error: Promise<FennecError> | undefined;
  /** Set when it exited while nobody was stopping it. */
  #died: Promise<FennecError> | undefined;
  readonly #listeners: Array<(reason: FennecError) => void> = [];

  constructor(o: SupervisedChildOptions) {
    this.#o = o;
    this.what = o.what;
    this.cleanup = o.cleanup ?? new CleanupStack();
    const log = o.log;
    (o.child.output ?? []).forEach((stream, i) =>
      stream?.on("data", (chunk: Buffer) => {
        this.#keep(chunk);
        log?.write(i === 0 ? "stdout" : "stderr", chunk);
      }),
    );
    this.exited = o.child.exited.then((exit) => {
      if (!this.#stopping) {
        this.#died = this.exitError();
        void this.#died.then((err) => {
          for (const listener of this.#listeners.splice(0)) listener(err);
        });
      }
      return exit;
    });
  }

  #keep(chunk: Buffer): void {
    const joined = Buffer.concat([this.#tail, chunk]);
    this.#tail = joined.length > TAIL_BYTES ? joined.subarray(joined.length - TAIL_BYTES) : joined;
  }

  /** The last few KiB the child wrote to stdout and stderr. */
  get output(): string {
    return this.#tail.toString();
  }

  /** True once close or destroy was called: an exit from then on is expected, not a crash. */
  get stopping(): boolean {
    return this.#stopping;
  }

  /** Registers a listener for the child dying on its own; one registered after that hears at once. */
  onExit(listener: (reason: FennecError) => void): void {
    if (this.#died) void this.#died.then(listener);
    else this.#listeners.push(listener);
  }

  /** Why the child ended, once it has: SANDBOX_START_FAILED, FN_OOM or FN_CRASHED, with its exit. */
  exitError(): Promise<FennecError> {
    this.#error ??= this.exited.then((exit) => this.#classify(exit));
    return this.#error;
  }

  async #classify(exit: ChildExit): Promise<FennecError> {
    const details: ExitDetails = { exitCode: exit.exitCode, signal: exit.signal };
    if (exit.spawnError) {
      return new FennecError(
        "SANDBOX_START_FAILED",
        `${this.what}: cannot start: ${exit.spawnError.message}`,
        {
          cause: exit.spawnError,
          details,
        },
      );
    }
    const oom = await Promise.resolve(this.#o.oomKilled?.(exit)).catch(() => false);
    if (oom) {
      const limit = this.#o.memoryMiB === undefined ? "" : ` of ${this.#o.memoryMiB} MiB`;
      return new FennecError("FN_OOM", `${this.what} exceeded its memory limit${limit} and was killed`, {
        details: { ...details, ...(this.#o.memoryMiB === undefined ? {} : { memoryMiB: this.#o.memoryMiB }) },
      });
    }
    const more = (await this.#o.moreOutput?.().catch(() => "")) ?? "";
    const said = `${this.output.trim()}\n${more.trim()}`.trim().slice(-QUOTED_CHARS);
    const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.exitCode}`;
    return new FennecError("FN_CRASHED", `${this.what} ${how}${said ? ` (output: ${said})` : ""}`, {
      details,
    });
  }

  /**
   * The error to report for a failed invocation: a broken connection (FN_CRASHED) of a child that
   * exits within RECLASSIFY_MS, unless Fennec is stopping it, becomes that exit's error (an OOM
   * kill, an exit code); anything else stands.
   */
  async explain(err: unknown): Promise<unknown> {
    if (!(err instanceof FennecError) || err.code !== "FN_CRASHED" || this.#stopping) return err;
    let timer: NodeJS.Timeout | undefined;
    const exited = await Promise.race([
      this.exited.then(() => true),
      new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), RECLASSIFY_MS))),
    ]);
    clearTimeout(timer);
    return exited && !this.#stopping ? this.exitError() : err;
  }

  /** Graceful stop: SIGTERM, SIGKILL after the grace, then the cleanup. Idempotent. */
  close(): Promise<void> {
    this.#stopping = true;
    this.#stopped ??= this.#thenRelease(
      terminate(
        (sig) => this.#signal(sig as "SIGTERM" | "SIGKILL"),
        this.exited.then(() => undefined),
        this.#o.graceMs ?? CLOSE_GRACE_MS,
      ),
    );
    return this.#stopped;
  }

  /** Immediate stop: SIGKILL (also during a pending close), then the cleanup. Idempotent. */
  destroy(): Promise<void> {
    this.#stopping = true;
    this.#signal("SIGKILL");
    this.#stopped ??= this.#thenRelease(this.exited);
    return this.#stopped;
  }

  #signal(sig: "SIGTERM" | "SIGKILL"): void {
    void Promise.resolve()
      .then(() => this.#o.child.kill(sig))
      .catch(() => undefined);
  }

  async #thenRelease(gone: Promise<unknown>): Promise<void> {
    try {
      await gone;
    } finally {
      await this.cleanup.run();
    }
  }
}
