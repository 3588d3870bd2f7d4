import { execFile } from "node:child_process";
import { mkdir, readdir, readFile, rm, rmdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { FennecError } from "../../../core/errors.js";
import { findExecutable } from "../../host-view.js";
import { selfIdentity, startTime } from "../../../core/process-identity.js";
import { ensureRunRoot } from "../../run-dir.js";

const execFileP = promisify(execFile);

/**
 * The UniFaaS tap mode: each VM gets a tap `faasN` and a /30 of a range (default 10.100.0.0/16).
 * The host side of the tap has the /30's first host address (the guest's gateway, and where the
 * readiness callback listens), the guest the second; netmask 255.255.255.252. A freed /30 goes to
 * the end of the free queue, as in UniFaaS, so a new VM does not inherit a just-dead VM's address
 * (and stale ARP entries) while fresh ones remain.
 *
 * With `netns`, every `ip` command runs as `ip -n <netns> ...`: the taps live in that namespace
 * and the VMM must be run inside it (`ip netns exec <netns> ...`).
 *
 * Each lease is recorded as `<stateDir>/<namespace>/<tap>.json` (created exclusively, so two
 * Fennecs sharing a namespace never take the same tap) with the owning Fennec's PID and process
 * start time. Opening a pool removes the taps recorded by Fennecs that are gone, and only those.
 */

export interface TapLease {
  readonly tap: string;
  /** Host side of the tap: the guest's gateway and the callback address. */
  readonly hostAddress: string;
  readonly guestAddress: string;
  readonly netmask: "255.255.255.252";
  readonly prefix: 30;
  /** Locally administered, derived from the guest address (02:fc:<guest address in hex>). */
  readonly mac: string;
  /** The namespace the tap lives in, or undefined for the host's. */
  readonly netns: string | undefined;
}

export interface TapPoolOptions {
  /** IPv4 CIDR the /30s are cut from; default 10.100.0.0/16. */
  readonly range?: string;
  readonly netns?: string;
  /** Where leases are recorded; default `<run base>/vm-taps` (run-dir.ts). */
  readonly stateDir?: string;
  /** The `ip` binary; default `ip` from iproute2 found on PATH or in the sbin directories. */
  readonly ip?: string;
}

interface TapRecord {
  readonly fennecPid: number;
  /** /proc/<pid>/stat start time: a recycled PID is not mistaken for the owner. */
  readonly fennecStart: string | undefined;
  readonly tap: string;
  readonly hostAddress: string;
}

const DEFAULT_RANGE = "10.100.0.0/16";
const NETMASK = "255.255.255.252";
const TAP_PREFIX = "faas";

export class TapPool {
  readonly #ip: string;
  readonly #netns: string | undefined;
  readonly #dir: string;
  readonly #range: string;
  readonly #base: number;
  readonly #count: number;
  /** /30s never leased yet are taken in order; then those given back, oldest first. */
  #nextFresh = 0;
  readonly #recycled: number[] = [];
  readonly #leased = new Map<string, { lease: TapLease; index: number }>();
  #closed = false;

  private constructor(ip: string, netns: string | undefined, dir: string, range: string) {
    const { base, count } = parseRange(range);
    this.#range = range;
    this.#ip = ip;
    this.#netns = netns;
    this.#dir = dir;
    this.#base = base;
    this.#count = count;
  }

  /** A pool for `opts.range` in `opts.netns`, after removing taps left by Fennecs that are gone. */
  static async open(opts: TapPoolOptions = {}): Promise<TapPool> {
    const range = opts.range ?? DEFAULT_RANGE;
    parseRange(range); // a bad range fails before anything is touched
    const ip = opts.ip ?? findExecutable("ip", "iproute2");
    // Beside the VMs' run directories, not among them: their sweep leaves alone what has no record.
    const dir = join(opts.stateDir ?? (await ensureRunRoot("vm-taps")), namespaceKey(opts.netns));
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const pool = new TapPool(ip, opts.netns, dir, range);
    // A new namespace has its loopback down, and without it even the namespace's own addresses
    // (the taps' host side, where callbacks arrive) are unreachable from inside it.
    if (opts.netns !== undefined) await pool.#run(["link", "set", "dev", "lo", "up"]);
    await pool.sweepStale();
    return pool;
  }

  /**
   * Removes the taps recorded by a Fennec that is no longer running (a crash), and their records.
   * A tap is deleted only if it is still a tun/tap device carrying no address or the recorded one,
   * so a device someone else has since created under that name is left alone. Returns the taps removed.
   */
  async sweepStale(): Promise<string[]> {
    const removed: string[] = [];
    for (const name of await readdir(this.#dir).catch(() => [] as string[])) {
      if (!name.endsWith(".json")) continue;
      const file = join(this.#dir, name);
      let record: TapRecord | undefined;
      try {
        record = JSON.parse(await readFile(file, "utf8")) as TapRecord;
      } catch {
        record = undefined;
      }
      if (record && (await ownerAlive(record))) continue;
      if (record && (await this.#isOurTap(record))) {
        await this.#run(["link", "del", "dev", record.tap]);
        removed.push(record.tap);
      }
      await rm(file, { force: true });
    }
    return removed;
  }

  /** A new tap with its /30, up and addressed; NO_CAPACITY when every /30 of the range is taken. */
  async lease(): Promise<TapLease> {
    if (this.#closed) throw new FennecError("SHUTTING_DOWN", "the tap pool is closed");
    // Each /30 is tried at most once per call: one taken by another Fennec goes to the queue's end.
    const available = this.#count - this.#leased.size;
    for (let attempt = 0; attempt < available; attempt++) {
      const index = this.#take();
      if (index === undefined) break;
      const lease = this.#leaseFor(index);
      if (!(await this.#claim(lease))) {
        this.#recycled.push(index);
        continue;
      }
      try {
        await this.#run(["tuntap", "add", "dev", lease.tap, "mode", "tap"]);
      } catch (err) {
        await rm(this.#recordPath(lease.tap), { force: true });
        this.#recycled.push(index);
        if (await this.#exists(lease.tap)) continue; // a device of someone else's: skip the name
        throw err;
      }
      this.#leased.set(lease.tap, { lease, index });
      try {
        await this.#run(["addr", "add", `${lease.hostAddress}/30`, "dev", lease.tap]);
        await this.#run(["link", "set", "dev", lease.tap, "up"]);
      } catch (err) {
        await this.release(lease);
        throw err;
      }
      return lease;
    }
    throw new FennecError("NO_CAPACITY", `no free /30 left for a tap in ${this.#range}`);
  }

  /** Deletes the tap and puts its /30 at the end of the free queue. */
  async release(lease: TapLease): Promise<void> {
    const held = this.#leased.get(lease.tap);
    if (!held) return;
    this.#leased.delete(lease.tap);
    try {
      await this.#run(["link", "del", "dev", lease.tap]);
    } catch (err) {
      // Still there: keep its record, so the next start's sweep removes it. Else it is gone already.
      if (await this.#exists(lease.tap)) throw err;
    }
    await rm(this.#recordPath(lease.tap), { force: true });
    this.#recycled.push(held.index);
  }

  /** Deletes every tap this pool still holds (call on shutdown, SIGINT included). */
  async close(): Promise<void> {
    this.#closed = true;
    for (const { lease } of [...this.#leased.values()]) await this.release(lease).catch(() => undefined);
    // The records' directory goes too once empty (another Fennec's records keep it).
    await rmdir(this.#dir).catch(() => undefined);
  }

  #take(): number | undefined {
    if (this.#nextFresh < this.#count) return this.#nextFresh++;
    return this.#recycled.shift();
  }

  #leaseFor(index: number): TapLease {
    const network = this.#base + index * 4;
    const guest = network + 2;
    return {
      tap: `${TAP_PREFIX}${index}`,
      hostAddress: formatAddress(network + 1),
      guestAddress: formatAddress(guest),
      netmask: NETMASK,
      prefix: 30,
      mac: ["02", "fc", ...bytes(guest).map((b) => b.toString(16).padStart(2, "0"))].join(":"),
      netns: this.#netns,
    };
  }

  #recordPath(tap: string): string {
    return join(this.#dir, `${tap}.json`);
  }

  /** Records the lease; false when another Fennec already holds that tap name in this namespace. */
  async #claim(lease: TapLease): Promise<boolean> {
    const record: TapRecord = {
      fennecPid: process.pid,
      fennecStart: (await selfIdentity()).start,
      tap: lease.tap,
      hostAddress: lease.hostAddress,
    };
    try {
      await writeFile(this.#recordPath(lease.tap), JSON.stringify(record), { flag: "wx" });
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const held = await readFile(this.#recordPath(lease.tap), "utf8")
        .then((t) => JSON.parse(t) as TapRecord)
        .catch(() => undefined);
      if (held && (await ownerAlive(held))) return false;
      // A dead owner's record: take the name over once its tap is gone.
      if (held && (await this.#isOurTap(held))) await this.#run(["link", "del", "dev", held.tap]);
      await rm(this.#recordPath(lease.tap), { force: true });
      return this.#claim(lease);
    }
  }

  async #exists(tap: string): Promise<boolean> {
    return (await this.#show(tap)) !== undefined;
  }

  /** Still the device that record describes: a tun/tap with no IPv4 address or the recorded one. */
  async #isOurTap(record: TapRecord): Promise<boolean> {
    const dev = await this.#show(record.tap);
    if (!dev || dev.linkinfo?.info_kind !== "tun") return false;
    const v4 = (dev.addr_info ?? []).filter((a) => a.family === "inet").map((a) => a.local);
    return v4.length === 0 || v4.includes(record.hostAddress);
  }

  async #show(tap: string): Promise<IpDevice | undefined> {
    try {
      const out = await this.#run(["-j", "-d", "addr", "show", "dev", tap]);
      return (JSON.parse(out) as IpDevice[])[0];
    } catch {
      return undefined;
    }
  }

  async #run(args: string[]): Promise<string> {
    const argv = this.#netns === undefined ? args : ["-n", this.#netns, ...args];
    try {
      return (await execFileP(this.#ip, argv)).stdout;
    } catch (err) {
      const e = err as NodeJS.ErrnoException & { stderr?: string };
      if (e.code === "ENOENT") {
        throw new FennecError(
          "SANDBOX_START_FAILED",
          `${this.#ip} is not installed: the tap mode needs \`ip\` from iproute2 (apt-get install iproute2)`,
        );
      }
      throw new FennecError(
        "SANDBOX_START_FAILED",
        `ip ${argv.join(" ")}: ${(e.stderr ?? e.message).trim()}`,
        {
          cause: err,
        },
      );
    }
  }
}

interface IpDevice {
  readonly ifname: string;
  readonly linkinfo?: { readonly info_kind?: string };
  readonly addr_info?: ReadonlyArray<{ readonly family: string; readonly local: string }>;
}

function namespaceKey(netns: string | undefined): string {
  return netns === undefined ? "host" : `ns-${netns.replace(/[^A-Za-z0-9_.-]/g, "_")}`;
}

/** `a.b.c.d/p` → its network address as a number and how many /30s it holds. */
function parseRange(range: string): { base: number; count: number } {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(range.trim());
  const octets = m ? m.slice(1, 5).map(Number) : [];
  const prefix = m ? Number(m[5]) : NaN;
  if (!m || octets.some((o) => o > 255) || !(prefix >= 8 && prefix <= 30)) {
    throw new FennecError(
      "CONFIG_INVALID",
      `tap range ${JSON.stringify(range)} is not an IPv4 CIDR with a prefix from /8 to /30`,
    );
  }
  const addr = octets.reduce((acc, o) => acc * 256 + o, 0);
  const size = 2 ** (32 - prefix);
  return { base: addr - (addr % size), count: size / 4 };
}

function bytes(addr: number): number[] {
  return [24, 16, 8, 0].map((shift) => Math.floor(addr / 2 ** shift) % 256);
}

function formatAddress(addr: number): string {
  return bytes(addr).join(".");
}

async function ownerAlive(record: TapRecord): Promise<boolean> {
  try {
    process.kill(record.fennecPid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  const now = await startTime(record.fennecPid);
  return record.fennecStart === undefined || now === undefined || now === record.fennecStart;
}
