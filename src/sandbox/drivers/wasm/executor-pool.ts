import { availableParallelism } from "node:os";
import { Readable } from "node:stream";
import { Worker } from "node:worker_threads";
import type { CallHost } from "../../../core/call-host.js";
import { FennecError } from "../../../core/errors.js";
import { FaasmSession, StateLocks } from "./faasm-host.js";
import { HostChannelServer, type HostReply, type HostRequest } from "./host-channel.js";
import { JobOutput } from "./job-output.js";
import type {
  DoneMessage,
  ExecutorData,
  FromWorker,
  JobMessage,
  LoadPayload,
  UnloadMessage,
} from "./protocol.js";
import { Ring } from "./ring.js";
import { StdinFeeder } from "./stdin-feeder.js";

const WORKER_URL = new URL("./worker.js", import.meta.url);
/** Modules one executor keeps loaded before it forgets the least recently used. */
const MAX_LOADED = 32;
/**
 * When every executor has been running its current job this long, waiting jobs get a new
 * executor: slow or runaway functions must not stall the others, but a queue of quick jobs on a
 * busy node is served faster by the executors it has than by more threads than cores.
 */
const SPAWN_AFTER_MS = 5;
/**
 * A job of a function over its fair share that has run this long gives its executor back when
 * another function's job waits and no executor can be added: quick jobs finish on their own.
 */
const PREEMPT_AFTER_MS = 50;
/**
 * Executors blocked in a host call that may last (awaiting a chained call, waiting for a state
 * lock) lend their places too, up to this many: a chain of depth N holds N of them while its
 * last call runs, so the bound is the chain depth limit's order, not `max`'s.
 */
const MAX_LENT_TO_HOST_CALLS = 64;
/** Host calls that may block for long (the others answer from the store at once). */
const BLOCKING_HOST_CALLS: ReadonlySet<HostRequest["op"]> = new Set(["await", "lock"]);

export interface Job {
  readonly kind: "load" | "invoke";
  /** The function the job belongs to: executors are shared fairly between functions. */
  readonly fn: string;
  /** The function revision whose module the job runs. */
  readonly key: string;
  readonly load: LoadPayload;
  readonly env: string[];
  /** The module's stdin: bytes at hand, or a stream read as the module reads. */
  readonly stdin: Uint8Array | Readable;
  /** What the call may ask of Fennec: a Faasm function's host calls are served through it. */
  readonly call?: CallHost | undefined;
}

/** A job under way: its stdout as it is written, and how it ended. */
export interface RunningJob {
  /** Ends after the last byte when the job ends; failed by the caller when it did not end well. */
  readonly output: JobOutput;
  /** Settles when the module has exited (or the job failed or was cancelled). */
  readonly done: Promise<DoneMessage>;
}

interface Executor {
  readonly worker: Worker;
  readonly stdout: Ring;
  readonly stdin: Ring;
  /** Host calls of the running job (host-channel.ts). */
  readonly host: HostChannelServer;
  /** Host calls under way that may block for long (BLOCKING_HOST_CALLS): its place is lent. */
  blockedInHost: number;
  booted: boolean;
  /** Instantiating the next copy after an invocation: a job sent now would wait for that. */
  preparing: boolean;
  /** key -> last use, in insertion order of recency. */
  readonly loaded: Map<string, number>;
  running: Pending | undefined;
}

interface Pending {
  readonly id: number;
  startedAt: number;
  readonly job: Job;
  readonly output: JobOutput;
  feeder: StdinFeeder | undefined;
  /** Its Faasm host calls, once it made one: it has had effects outside its sandbox then. */
  session: FaasmSession | undefined;
  readonly resolve: (r: DoneMessage) => void;
  readonly reject: (e: Error) => void;
  executor: Executor | undefined;
}

export interface ExecutorPoolOptions {
  /** Idle executors kept booted and warmed up for cold starts. */
  readonly spares?: number;
  /** Most executor threads; a job beyond waits for one to free up. */
  readonly max?: number;
}

/**
 * The threads that run wasm: a few executors shared by every function, each running one job at a
 * time. A job goes to an idle executor that already has its module (warm), else any idle one,
 * else waits; when jobs wait past a few milliseconds (executors stuck in slow or runaway
 * functions), another executor is started, up to `max`. Cancelling a running job terminates its
 * executor, which is the only way to stop guest code; the other executors never notice.
 *
 * Fairness: while several functions have work, each may occupy at most its share of `max`
 * (`max / functions with work`, at least one). A waiting job of a function under its share goes
 * first; if every executor is taken and none can be added, a function over its share gives back
 * the executor of its most recently started job (running for at least PREEMPT_AFTER_MS): that
 * executor is terminated and the job queued again, to be run from the start. That is safe while
 * a wasm job has had no effect outside its sandbox (no network, no writable files): none of its
 * output handed on and no streamed request body consumed. Jobs past that point are not taken
 * back; they run into their function's timeout like any other. So one function's runaway calls
 * never hold every executor: they run into their own timeouts while other functions' calls are
 * served.
 *
 * Streams: each executor has a stdout ring and a stdin ring (ring.ts). A job's stdout is drained
 * from the ring into its `output` stream as that is read, and a streamed request body is fed
 * into the stdin ring as the module reads; either side blocking holds the other back. An
 * executor blocked so (on a slow client, on a body still arriving) uses no CPU: its place is lent
 * to a new executor (up to `max` more), which goes again once nothing waits.
 */
export class ExecutorPool {
  readonly #executors: Executor[] = [];
  readonly #queue: Pending[] = [];
  readonly #spares: number;
  readonly #max: number;
  #nextId = 1;
  #closed = false;
  /** Outputs of jobs not yet ended, for `heldOutputBytes`. */
  readonly #live = new Set<JobOutput>();
  #spawnTimer: NodeJS.Timeout | undefined;
  /** Faasm's state locks, node-wide (every executor's calls share them). */
  readonly #locks = new StateLocks();

  constructor(opts: ExecutorPoolOptions = {}) {
    this.#spares = opts.spares ?? 2;
    this.#max = Math.max(this.#spares, opts.max ?? Math.max(4, availableParallelism() * 4));
    for (let i = 0; i < this.#spares; i++) this.#spawn();
  }

  get size(): number {
    return this.#executors.length;
  }

  /** True when some executor has `key` loaded (a start needs no load job then). */
  hasLoaded(key: string): boolean {
    return this.#executors.some((e) => e.loaded.has(key));
  }

  /**
   * Runs a job; `signal` aborting cancels it (terminating its executor if it is running), and so
   * does destroying its output before it ended (the reader went away).
   */
  run(job: Job, signal: AbortSignal): RunningJob {
    let pending!: Pending;
    const output = new JobOutput((err) =>
      this.#cancel(pending, err ?? new FennecError("INTERNAL", "the response was abandoned")),
    );
    const done = new Promise<DoneMessage>((resolve, reject) => {
      if (this.#closed) return reject(new FennecError("SHUTTING_DOWN", "the wasm executors are closed"));
      const onAbort = () => this.#cancel(pending, abortReason(signal));
      const settle =
        <T>(f: (v: T) => void) =>
        (v: T) => {
          signal.removeEventListener("abort", onAbort);
          this.#live.delete(output);
          f(v);
        };
      pending = {
        id: this.#nextId++,
        startedAt: 0,
        job,
        output,
        feeder: undefined,
        session: undefined,
        resolve: settle(resolve),
        reject: settle(reject),
        executor: undefined,
      };
      if (signal.aborted) return pending.reject(abortReason(signal));
      signal.addEventListener("abort", onAbort, { once: true });
      this.#live.add(output);
      this.#queue.push(pending);
      this.#pump();
    });
    return { output, done };
  }

  /** Output bytes held on the main thread by jobs still running (each bounded by its stream and ring). */
  get heldOutputBytes(): number {
    let n = 0;
    for (const o of this.#live) n += o.heldBytes;
    return n;
  }

  #cancel(pending: Pending | undefined, reason: Error): void {
    if (!pending) return;
    const queued = this.#queue.findIndex((p) => p.id === pending.id);
    if (queued >= 0) {
      this.#queue.splice(queued, 1)[0]!.reject(reason);
      return;
    }
    const executor = this.#executors.find((e) => e.running?.id === pending.id);
    if (executor) this.#retire(executor, reason);
  }

  /** Running jobs per function. */
  #runningByFn(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const e of this.#executors) {
      if (e.running) counts.set(e.running.job.fn, (counts.get(e.running.job.fn) ?? 0) + 1);
    }
    return counts;
  }

  /** How many executors one function may occupy while the others have work too. */
  #share(running: Map<string, number>): number {
    const withWork = new Set(running.keys());
    for (const p of this.#queue) withWork.add(p.job.fn);
    return Math.max(1, Math.floor(this.#max / Math.max(1, withWork.size)));
  }

  /** The first waiting job of a function under its share, else the oldest waiting job. */
  #nextJob(): Pending | undefined {
    const running = this.#runningByFn();
    const share = this.#share(running);
    return this.#queue.find((p) => (running.get(p.job.fn) ?? 0) < share) ?? this.#queue[0];
  }

  #pump(): void {
    // Cheap when nothing waits: it runs after every job (done, prepared).
    while (this.#queue.length > 0) {
      const idle = this.#executors.filter((e) => e.booted && !e.running);
      if (idle.length === 0) break;
      const next = this.#nextJob();
      if (!next) break;
      this.#queue.splice(this.#queue.indexOf(next), 1);
      // Prefer an executor not still instantiating its next copy (seconds for a module with tens
      // of MiB of data), then one that has the module loaded.
      const free = idle.filter((e) => !e.preparing);
      const pick = (among: Executor[]) => among.find((e) => e.loaded.has(next.job.key));
      this.#dispatch(pick(free) ?? free[0] ?? pick(idle) ?? idle[0]!, next);
    }
    if (this.#queue.length > 0) this.#preemptForWaiting();
    // While jobs wait, look again soon: to add an executor, or (when none can be added) to
    // preempt once a job has run long enough or lend the place of one that has since blocked.
    if (this.#queue.length > 0 && !this.#spawnTimer) {
      this.#spawnTimer = setTimeout(
        () => {
          this.#spawnTimer = undefined;
          const now = performance.now();
          const stuck = this.#executors.every(
            (e) => e.booted && e.running && now - e.running.startedAt >= SPAWN_AFTER_MS,
          );
          if (this.#queue.length > 0 && stuck && this.#hasRoom()) this.#spawn();
          else if (this.#queue.length > 0) this.#pump();
        },
        this.#hasRoom() ? SPAWN_AFTER_MS : PREEMPT_AFTER_MS,
      );
    }
    this.#keepSpares();
  }

  /**
   * Whether another executor may be started: up to `max` of them, plus one for each executor
   * blocked on a ring (a slow client, a body still arriving) up to `max` more, since those use no
   * CPU and must not hold other functions' calls back until their timeouts.
   */
  #hasRoom(): boolean {
    // Only jobs blocked after running a while: a quick job waits a moment for its body's first
    // chunk, and lending on that churned threads (one booted and ended per call).
    const now = performance.now();
    const blocked = this.#executors.filter(
      (e) =>
        e.running !== undefined &&
        now - e.running.startedAt >= PREEMPT_AFTER_MS &&
        (e.stdout.blocked || e.stdin.blocked),
    ).length;
    // An executor blocked in a host call (a caller awaiting its chained call) must not keep the
    // children it waits for from running: without its place lent, a chain deeper than `max`
    // would deadlock the pool.
    const inHost = this.#executors.filter((e) => e.running !== undefined && e.blockedInHost > 0).length;
    return (
      this.#executors.length <
      this.#max + Math.min(this.#max, blocked) + Math.min(MAX_LENT_TO_HOST_CALLS, inHost)
    );
  }

  /**
   * When every executor is taken and none can be added, takes executors back from functions over
   * their share for waiting jobs of functions under theirs (see the class comment).
   */
  #preemptForWaiting(): void {
    if (this.#closed || this.#hasRoom()) return;
    const running = this.#runningByFn();
    const share = this.#share(running);
    const room = new Map<string, number>();
    let starving = 0;
    for (const p of this.#queue) {
      const left = room.get(p.job.fn) ?? share - (running.get(p.job.fn) ?? 0);
      if (left <= 0) continue;
      room.set(p.job.fn, left - 1);
      starving++;
    }
    // Executors still booting will take waiting jobs soon.
    starving -= this.#executors.filter((e) => !e.booted).length;
    const now = performance.now();
    while (starving-- > 0) {
      let victim: Executor | undefined;
      for (const e of this.#executors) {
        const job = e.running;
        if (!job || (running.get(job.job.fn) ?? 0) <= share || !restartable(job)) continue;
        if (now - job.startedAt < PREEMPT_AFTER_MS) continue;
        if (!victim || job.startedAt > victim.running!.startedAt) victim = e;
      }
      if (!victim) return;
      const job = victim.running!;
      running.set(job.job.fn, running.get(job.job.fn)! - 1);
      victim.running = undefined;
      job.executor = undefined;
      job.startedAt = 0;
      job.output.abandon();
      job.feeder?.release();
      job.feeder = undefined;
      // Back to the head of the queue: it is its function's next job once that is under its share.
      this.#queue.unshift(job);
      this.#remove(victim);
    }
  }

  #dispatch(executor: Executor, pending: Pending): void {
    const { job } = pending;
    const needsLoad = !executor.loaded.has(job.key);
    const unload: string[] = [];
    executor.loaded.delete(job.key);
    executor.loaded.set(job.key, performance.now());
    while (executor.loaded.size > MAX_LOADED) {
      const oldest = executor.loaded.keys().next().value!;
      executor.loaded.delete(oldest);
      unload.push(oldest);
    }
    executor.running = pending;
    pending.executor = executor;
    pending.startedAt = performance.now();
    executor.worker.ref();
    executor.stdout.reset();
    executor.stdin.reset();
    pending.output.attach(executor.stdout);
    const streams = job.stdin instanceof Readable;
    // A body from the socket is a view into a larger pooled buffer, and structured clone would
    // copy all of it: copy just the bytes into their own buffer and transfer that.
    const stdin = streams ? new Uint8Array(0) : new Uint8Array(job.stdin);
    const msg: JobMessage = {
      type: "job",
      id: pending.id,
      kind: job.kind,
      key: job.key,
      load: needsLoad ? job.load : undefined,
      unload,
      env: job.env,
      stdin,
      stdinStreams: streams,
    };
    executor.worker.postMessage(msg, [stdin.buffer]);
    if (job.stdin instanceof Readable) {
      pending.feeder = new StdinFeeder(executor.stdin, job.stdin, (err) => this.#cancel(pending, err));
    }
  }

  #spawn(): Executor {
    const stdout = new Ring();
    const stdin = new Ring();
    const host = new HostChannelServer((request) => this.#serveHost(executor, request));
    const workerData: ExecutorData = {
      stdout: stdout.memory,
      stdin: stdin.memory,
      hostPort: host.workerPort,
      hostSignal: host.signal,
    };
    const executor: Executor = {
      worker: new Worker(WORKER_URL, { workerData, transferList: [host.workerPort] }),
      stdout,
      stdin,
      host,
      blockedInHost: 0,
      booted: false,
      preparing: false,
      loaded: new Map(),
      running: undefined,
    };
    this.#executors.push(executor);
    executor.worker.unref();
    executor.worker.on("message", (msg: FromWorker) => {
      if (msg.type === "ring") {
        executor.stdout.changed();
        executor.stdin.changed();
        return;
      }
      if (msg.type === "booted" || msg.type === "prepared") {
        executor.booted = true;
        executor.preparing = false;
        this.#pump();
        return;
      }
      const pending = executor.running;
      if (!pending || pending.id !== msg.id) return;
      executor.running = undefined;
      // The executor is free once its rings are: the last output moves to the main thread.
      ended(pending);
      executor.preparing = pending.job.kind === "invoke";
      // A module that failed to instantiate is loaded afresh next time (the worker dropped it).
      if (msg.outcome === "instantiate-failed" || msg.outcome === "oom")
        executor.loaded.delete(pending.job.key);
      this.#refWhileBusy();
      pending.resolve(msg);
      // An executor lent beyond `max` (see #hasRoom) goes once nothing waits for it.
      if (this.#executors.length > this.#max && this.#queue.length === 0) this.#remove(executor);
      this.#pump();
    });
    const died = (err: Error) => this.#retire(executor, err);
    executor.worker.on("error", died);
    executor.worker.on("exit", (code) => died(new Error(`executor thread exited with code ${code}`)));
    return executor;
  }

  /**
   * Serves a host call of the job running on `executor` through its call's CallHost. The job is
   * not restartable from then on (see `restartable`): its calls have had effects.
   */
  async #serveHost(executor: Executor, request: HostRequest): Promise<HostReply> {
    const pending = executor.running;
    if (!pending) return { ok: false, code: "INTERNAL", message: "a host call came from an idle executor" };
    pending.session ??= new FaasmSession(pending.job.call, this.#locks);
    const blocking = BLOCKING_HOST_CALLS.has(request.op);
    if (blocking) {
      executor.blockedInHost++;
      // Its place is lent now: a waiting job (the child it awaits) may get a new executor.
      this.#pump();
    }
    try {
      return await pending.session.serve(request);
    } finally {
      if (blocking) executor.blockedInHost--;
    }
  }

  /** Removes an executor (terminating its thread); its running job, if any, fails with `reason`. */
  #retire(executor: Executor, reason: Error): void {
    if (!this.#executors.includes(executor)) return;
    const running = executor.running;
    executor.running = undefined;
    this.#remove(executor);
    if (running) ended(running);
    running?.reject(reason);
    this.#refWhileBusy();
    this.#pump();
  }

  /** Takes an executor out of the pool and terminates its thread. */
  #remove(executor: Executor): void {
    const i = this.#executors.indexOf(executor);
    if (i < 0) return;
    this.#executors.splice(i, 1);
    executor.host.close();
    void executor.worker.terminate();
  }

  /**
   * Makes every executor drop a function revision's module and its waiting copy (its last
   * instance stopped), so memory the node budget no longer counts is not held.
   */
  forget(key: string): void {
    for (const e of this.#executors) {
      if (!e.loaded.delete(key)) continue;
      const msg: UnloadMessage = { type: "unload", keys: [key] };
      e.worker.postMessage(msg);
    }
  }

  #keepSpares(): void {
    if (this.#closed) return;
    const idle = this.#executors.filter((e) => !e.running && !e.preparing).length;
    for (let n = idle; n < this.#spares && this.#executors.length < this.#max; n++) this.#spawn();
  }

  /** Executor threads keep the process alive only while they run a job (shutdown must not wait on idle ones). */
  #refWhileBusy(): void {
    for (const e of this.#executors) {
      if (e.running) e.worker.ref();
      else e.worker.unref();
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#spawnTimer);
    for (const p of this.#queue.splice(0))
      p.reject(new FennecError("SHUTTING_DOWN", "the wasm executors are closed"));
    await Promise.all(
      this.#executors.splice(0).map((e) => {
        if (e.running) ended(e.running);
        e.running?.reject(new FennecError("SHUTTING_DOWN", "the wasm executors are closed"));
        e.host.close();
        return e.worker.terminate();
      }),
    );
  }
}

/** A job that has handed on nothing may be run again from the start (see the class comment). */
function restartable(pending: Pending): boolean {
  return !pending.output.delivered && (pending.feeder?.fed ?? 0) === 0 && pending.session === undefined;
}

/** A job left its executor: its output takes the ring's last bytes and its stdin stops. */
function ended(pending: Pending): void {
  pending.session?.end();
  pending.output.detach();
  pending.feeder?.stop();
  pending.feeder = undefined;
}

function abortReason(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason));
}
