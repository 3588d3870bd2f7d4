/**
 * The main thread's fast path for short wasm calls. Crossing to an executor thread and back costs
 * more than a short call's work (two wake-ups of ≈ 40 µs each on this kind of host, and a fresh
 * instance per call), so a call whose request is at hand runs here, on the gateway's thread, on
 * one instance per function revision that is reset between calls to the state it had right after
 * instantiation (or after `wizer.initialize`): its linear memory copied back and its mutable
 * globals set back, as Faasm restores a proto-Faaslet. Each call still starts from a fresh state.
 *
 * What keeps the gateway safe while guest code runs on its thread:
 * - Preemption: the module run here is the fuel-instrumented one (instrument.ts). Every loop
 *   head and function entry spends fuel; when it runs out the module calls `fennec.tick`, which
 *   checks the clock and, past the call's slice (a couple of milliseconds), throws out of the
 *   module. The call is then run again from the start on an executor, which is safe because a
 *   WAGI call has had no effect outside its sandbox yet: its request is at hand, its output only
 *   buffered, and it sees no network and no writable file.
 * - A call that sleeps (`poll_oneoff`) or writes more than an inline answer holds leaves the same
 *   way. A function whose calls left twice in a row skips the main thread for a while (`available`),
 *   so functions whose calls run long go to executors and stay there.
 * - Traps, exits, stack overflows and memory caps are caught and classified as on an executor.
 */
import type { LoadPayload } from "./protocol.js";
import { restore } from "./snapshot.js";
import { bytesStdin, prepareInstance, runStart, type Prepared, type RunResult } from "./wasi-run.js";

/** The fuel-instrumented module and what a reset needs to know of it (instrument.ts). */
export interface InlineModule {
  readonly module: WebAssembly.Module;
  /** Export names of the module's mutable globals: all of its state beside linear memory. */
  readonly globals: readonly string[];
  /** False when the module can change other instance state (tables, dropped segments): never reused. */
  readonly reusable: boolean;
}

/** Why a call left the main thread for an executor. */
export type MoveReason = "slice" | "sleep" | "output";

/** How calls fared on the main thread, for tests and /stats. */
export interface FastPathCounts {
  /** Calls run to their end on the main thread (answered, or failed as the module failed). */
  inline: number;
  /** Calls that started there and moved to an executor, by reason. */
  readonly moved: Record<MoveReason, number>;
}

export function fastPathCounts(): FastPathCounts {
  return { inline: 0, moved: { slice: 0, sleep: 0, output: 0 } };
}

/** Thrown through the guest's frames to hand the call to an executor. */
class Moved extends Error {
  constructor(readonly reason: MoveReason) {
    super(`the call moves to an executor (${reason})`);
  }
}

/** Units of fuel between two looks at the clock: ≈ 10–50 µs of guest work. */
const FUEL = 20_000;
/** Largest answer built on the main thread; a larger one streams from an executor. */
export const INLINE_MAX_OUTPUT = 1024 * 1024;
/** Largest linear memory reset by copying after each call (copying is the reset's cost). */
export const INLINE_MAX_MEMORY = 8 * 2 ** 20;

/**
 * Calls of a function that moved this many times in a row skip the main thread for a while: one
 * move may be noise (a pause of the whole process on a busy host), a second one in a row is not.
 */
const MOVES_BEFORE_AWAY = 2;
/** How long its calls then skip the main thread at first… */
const AWAY_MS = 1000;
/** …doubling while its calls keep moving, up to this. */
const MAX_AWAY_MS = 60_000;

/** An instance's state to start calls from: its linear memory and mutable globals. */
interface State {
  readonly memory: Uint8Array;
  readonly globals: readonly unknown[];
}

function globalsOf(instance: WebAssembly.Instance, names: readonly string[]): WebAssembly.Global[] {
  return names.map((name) => {
    const g = instance.exports[name];
    if (!(g instanceof WebAssembly.Global)) throw new Error(`the instrumented module lacks ${name}`);
    return g;
  });
}

export type InlineOutcome =
  | { readonly moved: false; readonly result: RunResult; readonly stdout: Buffer }
  | { readonly moved: true; readonly reason: MoveReason };

/**
 * Runs calls of one function revision on the main thread, one at a time (the thread runs one
 * thing at a time anyway), on an instance kept between calls.
 */
export class InlineRunner {
  readonly #module: InlineModule;
  readonly #load: LoadPayload;
  readonly #counts: FastPathCounts;
  /** A call's slice on this thread by the clock; it moves after at most two (see `#overrun`). */
  readonly #sliceMs: number;
  #prepared: Prepared | undefined;
  #fuel: WebAssembly.Global | undefined;
  /** The current instance's mutable globals, in the order of `InlineModule.globals`. */
  #globals: WebAssembly.Global[] = [];
  #initial: State | undefined;
  #sliceEnd = 0;
  /** The slice of the call under way: shorter than usual when the function's timeout is. */
  #callSliceMs = 0;
  /** Set at a call's first overrun: where the window that decides whether it really ran began. */
  #window: { readonly cpu: NodeJS.CpuUsage; readonly at: number } | undefined;
  /** Calls skip the main thread until then (performance.now()). */
  #awayUntil = 0;
  #awayMs = 0;
  /** Calls in a row that moved to an executor. */
  #movesInARow = 0;

  constructor(module: InlineModule, load: LoadPayload, counts: FastPathCounts, sliceMs: number) {
    this.#module = module;
    this.#load = load;
    this.#counts = counts;
    this.#sliceMs = sliceMs;
  }

  /** False while the function's calls have lately been moving to executors (they run long). */
  available(): boolean {
    return this.#awayUntil === 0 || performance.now() >= this.#awayUntil;
  }

  /**
   * A call that moved has ended on its executor. The time away counts from here as well as from
   * the move: on a busy host a long call can outlast the whole window on its executor, and the
   * function's next calls would then try the main thread again as if it never ran long.
   */
  movedCallEnded(): void {
    if (this.#awayMs > 0) this.#awayUntil = Math.max(this.#awayUntil, performance.now() + this.#awayMs);
  }

  /** Runs one call, or reports that it must run on an executor (having had no effect). */
  run(env: string[], stdin: Uint8Array, timeoutMs: number): InlineOutcome {
    const prepared = this.#ready();
    this.#fuel!.value = 0; // the first function entry looks at the clock
    this.#callSliceMs = Math.min(this.#sliceMs, timeoutMs);
    this.#window = undefined;
    this.#sliceEnd = performance.now() + this.#callSliceMs;
    const chunks: Uint8Array[] = [];
    let size = 0;
    try {
      const result = runStart(prepared, {
        env,
        stdin: bytesStdin(stdin),
        // Past the function's own limit too: an executor then streams the head and cuts the
        // body there, as for every call that writes too much.
        write: (chunk) => {
          size += chunk.byteLength;
          if (size > INLINE_MAX_OUTPUT || size > this.#load.maxOutputBytes) throw new Moved("output");
          chunks.push(chunk);
        },
        maxOutputBytes: Number.POSITIVE_INFINITY,
        maxMemoryBytes: this.#load.maxMemoryBytes,
        escapes: (err) => err instanceof Moved,
      });
      this.#movesInARow = 0;
      this.#awayMs = 0;
      this.#awayUntil = 0;
      this.#counts.inline++;
      return { moved: false, result, stdout: Buffer.concat(chunks, size) };
    } catch (err) {
      if (!(err instanceof Moved)) throw err;
      if (++this.#movesInARow >= MOVES_BEFORE_AWAY) {
        this.#awayMs = Math.min(MAX_AWAY_MS, this.#awayMs * 2 || AWAY_MS);
        this.#awayUntil = performance.now() + this.#awayMs;
      }
      this.#counts.moved[err.reason]++;
      return { moved: true, reason: err.reason };
    } finally {
      this.#reset();
    }
  }

  /** The instance for the next call, made when there is none. */
  #ready(): Prepared {
    if (this.#prepared) return this.#prepared;
    const tick = () => {
      if (performance.now() > this.#sliceEnd) this.#overrun();
      return FUEL;
    };
    // The shim's poll_oneoff spins until its deadline: a sleeping call must not spin here.
    const sleep = () => {
      throw new Moved("sleep");
    };
    const prepared = prepareInstance(
      this.#module.module,
      this.#load.dirs,
      { fennec: { tick } },
      { poll_oneoff: sleep },
    );
    const fuel = prepared.instance.exports["fennec:fuel"];
    if (!(fuel instanceof WebAssembly.Global)) throw new Error("the instrumented module lacks fennec:fuel");
    this.#fuel = fuel;
    this.#globals = globalsOf(prepared.instance, this.#module.globals);
    this.#prepared = prepared;
    // A pre-initialised module starts from what `wizer.initialize` left (snapshot.ts); the fuel
    // variant has the same globals at the same indices, so the snapshot fits it too.
    if (this.#load.snapshot) restore(prepared.instance, this.#load.snapshot);
    // A new instance is now in its initial state: that is the state every call starts from.
    this.#initial ??= {
      memory: new Uint8Array(prepared.memory.buffer).slice(),
      globals: this.#globals.map((g): unknown => g.value),
    };
    return prepared;
  }

  /**
   * The call's slice is over by the clock. On a busy host the clock also runs while the kernel
   * has this thread off its CPU, which must not count against the call, and asking for CPU time
   * is a system call too dear for every call. So the first overrun only opens a window of one
   * more slice; at its end the call moves if the process used at least half of it on a CPU (its
   * other threads count too, which can only move a call sooner), and otherwise (it was mostly
   * waiting for a CPU) a new window opens. A call that really runs long so holds the thread for
   * two slices at most.
   */
  #overrun(): void {
    const now = performance.now();
    const window = this.#window;
    if (window) {
      const used = process.cpuUsage(window.cpu);
      if ((used.user + used.system) / 1000 >= (now - window.at) / 2) throw new Moved("slice");
    }
    this.#window = { cpu: process.cpuUsage(), at: now };
    this.#sliceEnd = now + this.#callSliceMs;
  }

  /**
   * Puts the instance back to its initial state, or drops it when that cannot be done by copying
   * (its memory grew, or the module keeps state elsewhere): the next call instantiates anew.
   */
  #reset(): void {
    const prepared = this.#prepared;
    const initial = this.#initial;
    if (!prepared || !initial) return;
    if (!this.#module.reusable || prepared.memory.buffer.byteLength !== initial.memory.byteLength) {
      this.#prepared = undefined;
      return;
    }
    new Uint8Array(prepared.memory.buffer).set(initial.memory);
    initial.globals.forEach((value, i) => {
      this.#globals[i]!.value = value;
    });
  }
}
