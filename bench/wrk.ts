/**
 * Runs wrk (/usr/bin/wrk, Debian's package) against a URL with a small POST body and reads its
 * summary from a Lua `done` hook as JSON (throughput, latency percentiles, errors), plus the CPU
 * time the server's processes spent meanwhile, so the cost per request shows even when this
 * shared machine is busy, and the CPU wrk itself spent, which shows whether the client saturated.
 */
import { execFile } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/** The percentiles kept from every run (enough for a CDF). */
const QUANTILES = [1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97.5, 99, 99.5, 99.9];

export interface WrkResult {
  readonly requests: number;
  readonly seconds: number;
  readonly rps: number;
  /** Latency percentile (µs) by quantile (%). */
  readonly latencyUs: Record<string, number>;
  /** Socket errors, timeouts and non-2xx/3xx answers. */
  readonly errors: number;
  /**
   * CPU seconds wrk itself used (user + system): near `seconds` × threads, wrk was the bottleneck.
   * Read as this process's reaped-children time, so it is wrk's when no other child of the
   * benchmark exits during the run (true of the benchmarks here: their servers outlive the runs).
   */
  readonly clientCpuS: number;
}

const LUA = (body: string) => `wrk.method = "POST"
wrk.body = ${JSON.stringify(body)}
wrk.headers["Content-Type"] = "text/plain"
done = function(summary, latency, requests)
  local e = summary.errors
  local q = {}
  for _, p in ipairs({${QUANTILES.join(", ")}}) do
    q[#q + 1] = string.format('"%s": %d', p, latency:percentile(p))
  end
  io.write(string.format('WRK-JSON {"requests": %d, "duration": %d, "errors": %d, "latency": {%s}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    table.concat(q, ", ")))
end
`;

/** Writes the Lua script wrk runs (a POST of `body`); returns its path. */
export async function wrkScript(dir: string, body: string): Promise<string> {
  const file = join(dir, "post.lua");
  await writeFile(file, LUA(body));
  return file;
}

/** `wrk -t<threads> -c<connections> -d<seconds>s -s script url`. */
export async function wrk(
  url: string,
  script: string,
  opts: { threads: number; connections: number; seconds: number },
): Promise<WrkResult> {
  const cpu0 = reapedChildrenCpu();
  const { stdout } = await run(
    "/usr/bin/wrk",
    [
      `-t${opts.threads}`,
      `-c${opts.connections}`,
      `-d${opts.seconds}s`,
      "--timeout",
      "10s",
      "-s",
      script,
      url,
    ],
    { maxBuffer: 1 << 20 },
  );
  const clientCpuS = reapedChildrenCpu() - cpu0;
  const line = stdout.split("\n").find((l) => l.startsWith("WRK-JSON "));
  if (!line) throw new Error(`wrk printed no summary: ${stdout}`);
  const s = JSON.parse(line.slice("WRK-JSON ".length)) as {
    requests: number;
    duration: number;
    errors: number;
    latency: Record<string, number>;
  };
  const seconds = s.duration / 1e6;
  return {
    requests: s.requests,
    seconds,
    rps: s.requests / seconds,
    latencyUs: s.latency,
    errors: s.errors,
    clientCpuS,
  };
}

const TICK_S = 0.01; // USER_HZ is 100 on Linux

/** User + system CPU seconds in a `/proc/.../stat` file, 0 once its process or thread is gone. */
function cpuIn(statFile: string): number {
  try {
    const stat = readFileSync(statFile, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) * TICK_S; // fields 14 and 15: utime, stime
  } catch {
    return 0;
  }
}

/** User + system CPU seconds of a process (all its threads) so far. */
const cpuOf = (pid: number): number => cpuIn(`/proc/${pid}/stat`);

/** CPU seconds of a process's main thread alone: a Node process's event loop, not its workers or GC. */
export const mainThreadCpuSeconds = (pid: number): number => cpuIn(`/proc/${pid}/task/${pid}/stat`);

/** User + system CPU seconds of every thread of process `pid` (a store's writer thread included). */
export const processCpuSeconds = (pid: number): number => cpuIn(`/proc/${pid}/stat`);

/** User + system CPU seconds of this process's children that have exited and been waited for. */
function reapedChildrenCpu(): number {
  const stat = readFileSync("/proc/self/stat", "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[13]) + Number(f[14])) * TICK_S; // fields 16 and 17: cutime, cstime
}

/** The process and every descendant of it alive now. */
export function processTree(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(name)]);
    } catch {
      // exited meanwhile
    }
  }
  const out: number[] = [];
  const walk = (p: number) => {
    out.push(p);
    for (const c of children.get(p) ?? []) walk(c);
  };
  walk(pid);
  return out;
}

/** CPU seconds of `pids` together. */
export function cpuSeconds(pids: readonly number[]): number {
  return pids.reduce((s, p) => s + cpuOf(p), 0);
}
