import { readlinkSync } from "node:fs";
import { setPriority } from "node:os";

/**
 * How much an executor thread yields to the gateway's thread when both want a CPU. A runaway or
 * long call spins an executor at 100 % until its timeout; with as many of them as cores, the
 * gateway's thread (which parses every request and now runs short wasm calls itself) got only
 * its fair share of a core, and other functions' p99 rose by 6–20 ms (docs/benchmarks.md). At
 * nice 10 a thread weighs about a tenth of one at 0, so the gateway goes first; an executor on an
 * otherwise idle CPU runs as fast as before.
 */
export const EXECUTOR_NICE = 10;

/**
 * Lowers the calling thread's priority (Linux: `setpriority` on its thread id lowers that thread
 * alone). Returns whether it could; elsewhere, or without /proc, threads keep the process's.
 */
export function lowerThisThread(nice: number): boolean {
  try {
    const tid = Number(readlinkSync("/proc/thread-self").split("/").pop());
    if (!Number.isSafeInteger(tid) || tid <= 0) return false;
    setPriority(tid, nice);
    return true;
  } catch {
    return false;
  }
}
