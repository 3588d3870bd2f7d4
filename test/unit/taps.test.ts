import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { TapPool, type TapLease } from "../../src/sandbox/drivers/vm/taps.js";
import { tempDir } from "../helpers/paths.js";

// Needs root and iproute2 (.ci/run has both). Every test works in a network namespace of its own,
// created here and deleted in `after`: no tap or address ever appears in the host's namespace.
const run = promisify(execFile);
const namespaces: string[] = [];
let counter = 0;

async function newNamespace(): Promise<string> {
  const name = `fennec-test-${process.pid}-${counter++}`;
  await run("ip", ["netns", "add", name]);
  namespaces.push(name);
  return name;
}

interface IpDevice {
  ifname: string;
  flags: string[];
  addr_info: { family: string; local: string; prefixlen: number }[];
}

/** What `ip -n ns -j addr` says about one device, or undefined when it does not exist. */
async function device(ns: string, dev: string): Promise<IpDevice | undefined> {
  try {
    const { stdout } = await run("ip", ["-n", ns, "-j", "addr", "show", "dev", dev]);
    return (JSON.parse(stdout) as IpDevice[])[0];
  } catch {
    return undefined;
  }
}

async function tapsIn(ns: string): Promise<string[]> {
  const { stdout } = await run("ip", ["-n", ns, "-j", "link", "show", "type", "tun"]);
  return (JSON.parse(stdout || "[]") as IpDevice[]).map((d) => d.ifname).sort();
}

/** Runs a Node one-liner inside the namespace. */
async function nodeIn(ns: string, script: string, ...args: string[]): Promise<string> {
  const { stdout } = await run("ip", ["netns", "exec", ns, process.execPath, "-e", script, ...args], {
    timeout: 60_000,
  });
  return stdout.trim();
}

// Plays the VMM's part on a tap without a VM: attaches to it through /dev/net/tun (TUNSETIFF with
// IFF_TAP|IFF_NO_PI, as a VMM does), answers the host's ARP request for the guest address with
// the lease's MAC, and exits once a TCP segment for the guest arrives. Perl, because Node cannot
// ioctl and /usr/bin/perl is in every Debian (perl-base).
const FAKE_GUEST = String.raw`
use strict; $| = 1;
my ($tap, $mac, $ip) = @ARGV;
sysopen(my $fh, "/dev/net/tun", 2) or die "open /dev/net/tun: $!";
ioctl($fh, 0x400454ca, pack("Z16 s x22", $tap, 0x0002 | 0x1000)) or die "TUNSETIFF: $!";
print "attached\n";
my $macb = pack("C6", map { hex } split /:/, $mac);
my $ipb = pack("C4", split /\./, $ip);
while (sysread($fh, my $f, 4096)) {
  my $type = unpack("n", substr($f, 12, 2));
  if ($type == 0x0806 && unpack("n", substr($f, 20, 2)) == 1 && substr($f, 38, 4) eq $ipb) {
    syswrite($fh, substr($f, 6, 6) . $macb . pack("n nnCCn", 0x0806, 1, 0x0800, 6, 4, 2)
      . $macb . $ipb . substr($f, 22, 6) . substr($f, 28, 4));
    print "arp\n";
  } elsif ($type == 0x0800 && substr($f, 30, 4) eq $ipb && unpack("C", substr($f, 23, 1)) == 6) {
    print "tcp to guest\n";
    exit 0;
  }
}`;

describe("TapPool (UniFaaS tap mode)", () => {
  let state: Awaited<ReturnType<typeof tempDir>>;
  before(async () => {
    state = await tempDir("fennec-taps-");
  });
  after(async () => {
    for (const ns of namespaces) await run("ip", ["netns", "del", ns]).catch(() => undefined);
    await state.cleanup();
  });

  const open = (netns: string, range?: string) =>
    TapPool.open({ netns, stateDir: state.dir, ...(range ? { range } : {}) });

  it("leases faasN with the /30's first host address on the host side, up, and releases it", async () => {
    const ns = await newNamespace();
    const pool = await open(ns);
    const lease = await pool.lease();
    assert.deepEqual(lease, {
      tap: "faas0",
      hostAddress: "10.100.0.1",
      guestAddress: "10.100.0.2",
      netmask: "255.255.255.252",
      prefix: 30,
      mac: "02:fc:0a:64:00:02",
      netns: ns,
    });
    const dev = await device(ns, "faas0");
    assert.ok(dev, "the tap exists in the namespace");
    assert.ok(dev.flags.includes("UP"));
    assert.deepEqual(
      dev.addr_info.filter((a) => a.family === "inet").map((a) => `${a.local}/${a.prefixlen}`),
      ["10.100.0.1/30"],
    );
    const { stdout } = await run("ip", ["-n", ns, "-j", "route", "get", lease.guestAddress]);
    assert.equal(
      (JSON.parse(stdout) as { dev: string }[])[0]?.dev,
      "faas0",
      "the guest is reached through the tap",
    );
    assert.ok((await readFile(join(state.dir, `ns-${ns}`, "faas0.json"), "utf8")).includes(`${process.pid}`));

    await pool.release(lease);
    assert.equal(await device(ns, "faas0"), undefined, "release deletes the tap");
    await assert.rejects(readFile(join(state.dir, `ns-${ns}`, "faas0.json")), { code: "ENOENT" });
    await pool.close();
  });

  it("hands out distinct /30s and recycles a released one only after the fresh ones (FIFO)", async () => {
    const ns = await newNamespace();
    const pool = await open(ns, "10.100.7.0/28"); // four /30s
    const a = await pool.lease();
    const b = await pool.lease();
    assert.deepEqual([a.hostAddress, b.hostAddress], ["10.100.7.1", "10.100.7.5"]);
    await pool.release(a);
    const c = await pool.lease();
    const d = await pool.lease();
    assert.deepEqual([c.guestAddress, d.guestAddress], ["10.100.7.10", "10.100.7.14"], "fresh /30s first");
    await pool.release(c);
    const e = await pool.lease();
    const f = await pool.lease();
    assert.deepEqual([e.tap, e.hostAddress], ["faas0", "10.100.7.1"], "then the oldest released");
    assert.deepEqual([f.tap, f.hostAddress], ["faas2", "10.100.7.9"]);
    assert.deepEqual(await tapsIn(ns), ["faas0", "faas1", "faas2", "faas3"]);
    await assert.rejects(pool.lease(), { code: "NO_CAPACITY" });
    await pool.close();
  });

  it("removes every tap it created on close", async () => {
    const ns = await newNamespace();
    const pool = await open(ns);
    await Promise.all([pool.lease(), pool.lease(), pool.lease()]);
    assert.deepEqual(await tapsIn(ns), ["faas0", "faas1", "faas2"]);
    await pool.close();
    assert.deepEqual(await tapsIn(ns), []);
    await assert.rejects(pool.lease(), { code: "SHUTTING_DOWN" });
  });

  it("at start removes taps recorded by a Fennec that is gone, and touches nothing else", async () => {
    const ns = await newNamespace();
    const dir = join(state.dir, `ns-${ns}`);
    await mkdir(dir, { recursive: true });
    const dead = spawn(process.execPath, ["-e", ""]);
    await new Promise((resolve) => dead.once("exit", resolve));
    const live = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"]);
    try {
      const liveStart = (await readFile(`/proc/${live.pid}/stat`, "utf8")).split(") ")[1]!.split(" ")[19];
      const record = (tap: string, pid: number, start: string | undefined, hostAddress: string) =>
        writeFile(
          join(dir, `${tap}.json`),
          JSON.stringify({ fennecPid: pid, fennecStart: start, tap, hostAddress }),
        );
      for (const tap of ["faas0", "faas1", "faas2", "other0"]) {
        await run("ip", ["-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"]);
      }
      await run("ip", ["-n", ns, "addr", "add", "10.100.0.1/30", "dev", "faas0"]);
      await run("ip", ["-n", ns, "addr", "add", "10.100.0.5/30", "dev", "faas1"]);
      await run("ip", ["-n", ns, "addr", "add", "192.168.77.1/24", "dev", "faas2"]);
      await record("faas0", dead.pid!, "1", "10.100.0.1"); // a crashed Fennec's tap
      await record("faas1", live.pid!, liveStart, "10.100.0.5"); // a running Fennec's tap
      await record("faas2", dead.pid!, "1", "10.100.0.9"); // recorded, but the device is someone else's now
      // other0 is not recorded at all.

      const pool = await open(ns);
      assert.deepEqual(await tapsIn(ns), ["faas1", "faas2", "other0"], "only the dead Fennec's tap went");
      await assert.rejects(readFile(join(dir, "faas2.json")), { code: "ENOENT" }, "its stale record did");
      assert.ok((await device(ns, "faas2"))?.addr_info.some((a) => a.local === "192.168.77.1"));

      // New leases skip the live Fennec's tap and the foreign device of the same name.
      const first = await pool.lease();
      const second = await pool.lease();
      assert.deepEqual([first.tap, second.tap], ["faas0", "faas3"]);
      await pool.close();
      assert.deepEqual(await tapsIn(ns), ["faas1", "faas2", "other0"]);
    } finally {
      live.kill("SIGKILL");
    }
  });

  it("gives the namespace a usable callback address and delivers the host's traffic for the guest to the tap", async () => {
    const ns = await newNamespace();
    const pool = await open(ns);
    const lease: TapLease = await pool.lease();
    // The callback address: something in the namespace can listen on the host side and be reached.
    const echo = await nodeIn(
      ns,
      `const net = require("node:net");
       const s = net.createServer((c) => c.end("callback ok")).listen(0, process.argv[1], () => {
         net.connect(s.address().port, process.argv[1]).on("data", (d) => { console.log(String(d)); process.exit(0); });
       });`,
      lease.hostAddress,
    );
    assert.equal(echo, "callback ok");

    // The guest side: whatever attaches to the tap (a VMM; here Perl) gets the host's ARP request
    // for the guest address and, once answered with the lease's MAC, the TCP segment itself.
    const guest = spawn("ip", [
      "netns",
      "exec",
      ns,
      "perl",
      "-e",
      FAKE_GUEST,
      lease.tap,
      lease.mac,
      lease.guestAddress,
    ]);
    let seen = "";
    guest.stdout.on("data", (c: Buffer) => (seen += c.toString()));
    guest.stderr.on("data", (c: Buffer) => (seen += c.toString()));
    try {
      while (!seen.includes("attached")) {
        assert.equal(guest.exitCode, null, `the fake guest failed: ${seen}`);
        await new Promise((r) => setTimeout(r, 10));
      }
      await nodeIn(
        ns,
        `const c = require("node:net").connect({ host: process.argv[1], port: 8080, timeout: 2000 });
         c.on("timeout", () => process.exit(0)); c.on("error", () => process.exit(0));`,
        lease.guestAddress,
      );
      await new Promise((resolve) =>
        guest.exitCode === null ? guest.once("exit", resolve) : resolve(undefined),
      );
      assert.match(seen, /arp\ntcp to guest/);
    } finally {
      guest.kill("SIGKILL");
      await pool.close();
    }
  });

  it("names iproute2 when `ip` is missing", async () => {
    const ns = `fennec-test-${process.pid}-never-created`;
    await assert.rejects(
      TapPool.open({ netns: ns, stateDir: state.dir, ip: "/nonexistent/ip" }),
      (err: Error) => {
        assert.match(err.message, /iproute2/);
        return true;
      },
    );
  });

  it("rejects a range that is not an IPv4 CIDR", async () => {
    await assert.rejects(TapPool.open({ range: "10.100.0.0/31", stateDir: state.dir }), {
      code: "CONFIG_INVALID",
    });
  });
});
