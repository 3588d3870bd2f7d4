import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { FennecError } from "../../src/core/errors.js";
import { startFennec } from "../../src/main.js";
import { requeueOrphans } from "../../src/store/housekeeping.js";
import { openStore } from "../../src/store/open-store.js";
import { SqliteStore } from "../../src/store/sqlite-store.js";
import { ROOT, tempDir } from "../helpers/paths.js";
import { GENEROUS_MS } from "../helpers/wait.js";

const CHILD = join(ROOT, "dist", "test", "helpers", "store-child.js");

const newCall = (body: Uint8Array) => ({
  id: randomUUID(),
  function: "u/f",
  request: { method: "POST", path: "/", query: "", headers: {}, body },
  submittedAt: Date.now(),
});

describe("invocation store: bad input and faults", () => {
  const cleanups: Array<() => Promise<void>> = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });
  const scratch = async () => {
    const t = await tempDir("fennec-store-fault-");
    cleanups.push(t.cleanup);
    return t.dir;
  };

  it("refuses a damaged store file at start with STORE_CORRUPT, naming it and what to do, touching nothing", async () => {
    const dir = await scratch();
    const state = join(dir, "state");
    await mkdir(state);
    const garbage = Buffer.from("this is not a database, but it is someone's file\n".repeat(200));
    await writeFile(join(state, "fennec.db"), garbage);
    assert.throws(
      () => openStore(state),
      (err: unknown) =>
        err instanceof FennecError &&
        err.code === "STORE_CORRUPT" &&
        err.message.includes(join(state, "fennec.db")) &&
        err.message.includes("Move it aside"),
    );
    // Fennec's start fails the same way, before it touches the registry.
    const registry = join(dir, "registry");
    await mkdir(registry);
    await assert.rejects(
      startFennec({ registry, port: 0, logLevel: "silent", stateDir: state }),
      (err: unknown) => err instanceof FennecError && err.code === "STORE_CORRUPT",
    );
    assert.deepEqual(await readFile(join(state, "fennec.db")), garbage, "the file is as it was");
    assert.deepEqual(await readdir(state), ["fennec.db"], "nothing was created beside it");
    assert.deepEqual(await readdir(registry), [], "nothing was created in the registry");
  });

  it("shares a store with a second live opener, and knows which one opened it alone", async () => {
    const dir = await scratch();
    const first = openStore(dir);
    assert.equal(first.soleOwner, true);
    const second = openStore(dir);
    assert.equal(second.soleOwner, false, "another live process has it: its running calls are not orphans");
    const c = newCall(new Uint8Array(3));
    await second.enqueue(c);
    assert.equal((await first.get(c.id))?.state, "queued", "both see one store");
    const [leased] = await first.take({ node: "a", max: 1, leaseMs: 60_000, now: Date.now() });
    assert.equal(leased?.record.id, c.id);
    assert.deepEqual(await second.take({ node: "b", max: 1, leaseMs: 60_000, now: Date.now() }), []);
    await second.close();
    await first.close();
    const third = openStore(dir);
    assert.equal(third.soleOwner, true, "the lock went with the closes");
    await third.close();
  });

  it("rejects an enqueue with STORE_FULL when the disk is full, keeps what it accepted, and works once space frees", async (t) => {
    const dir = await scratch();
    const mnt = join(dir, "tiny");
    await mkdir(mnt);
    try {
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt], { stdio: "pipe" });
    } catch (err) {
      const why = `mounting a tmpfs needs root: ${(err as Error).message.split("\n")[0]}`;
      if (process.env["CI"] === "true") throw new Error(why);
      return t.skip(why);
    }
    cleanups.push(async () => {
      execFileSync("umount", [mnt]);
      await rm(mnt, { recursive: true, force: true });
    });
    const store = openStore(join(mnt, "state"));
    // Another program's file takes most of the disk; removing it is the space freeing up.
    const filler = join(mnt, "filler");
    await writeFile(filler, Buffer.alloc(1024 * 1024));
    const body = new Uint8Array(32 * 1024).fill(7);
    const accepted: string[] = [];
    let refused: FennecError | undefined;
    let refusedId = "";
    for (let i = 0; i < 200 && !refused; i++) {
      const c = newCall(body);
      try {
        accepted.push((await store.enqueue(c)).id);
      } catch (err) {
        assert.ok(err instanceof FennecError, String(err));
        refused = err;
        refusedId = c.id;
      }
    }
    assert.equal(refused?.code, "STORE_FULL", "the disk filled up and the enqueue said so");
    assert.ok(accepted.length > 0);
    assert.equal(await store.get(refusedId), undefined, "a refused call is not there");
    for (const id of accepted)
      assert.equal((await store.get(id))?.state, "queued", "every accepted call is kept");

    await rm(filler);
    const later = newCall(body);
    assert.deepEqual(await store.enqueue(later), { id: later.id, created: true });
    assert.equal(
      (await store.take({ node: "n", max: 1000, leaseMs: 1000, now: Date.now() })).length,
      accepted.length + 1,
    );
    await store.close();
    const again = openStore(join(mnt, "state"));
    assert.equal((await again.get(later.id))?.state, "running");
    await again.close();
  });

  it("keeps every call it reported accepted when its process is SIGKILLed, and runs the running ones again", async () => {
    const dir = await scratch();
    const path = join(dir, "fennec.db");
    const child = spawn(process.execPath, [CHILD, path], { stdio: ["ignore", "pipe", "inherit"] });
    const accepted: string[] = [];
    const running: string[] = [];
    let out = "";
    const exited = new Promise<NodeJS.Signals | null>((resolve) =>
      child.once("exit", (_, signal) => resolve(signal)),
    );
    await new Promise<void>((resolve) => {
      child.stdout.on("data", (chunk: Buffer) => {
        out += chunk.toString();
        const lines = out.split("\n");
        out = lines.pop()!;
        for (const l of lines) {
          const [what, id] = l.split(" ");
          (what === "running" ? running : accepted).push(id!);
        }
        if (accepted.length >= 300) resolve();
      });
      child.once("exit", () => resolve());
    });
    const drained = new Promise((resolve) => child.stdout.once("end", resolve));
    child.kill("SIGKILL");
    assert.equal(await exited, "SIGKILL", "the child was killed, it did not exit on its own");
    // Every whole line it printed before dying counts (a cut-off last line was never reported).
    await drained;
    assert.equal(running.length, 2);

    const store = new SqliteStore(path);
    for (const id of accepted) {
      const r = await store.get(id);
      assert.equal(r?.state, "queued", `accepted call ${id} survived`);
    }
    for (const id of running) assert.equal((await store.get(id))?.state, "running");
    assert.equal(await requeueOrphans(store), 2);
    const leased = await store.take({ node: "after", max: 100_000, leaseMs: 1000, now: Date.now() });
    const ids = new Set(leased.map((l) => l.record.id));
    for (const id of [...running, ...accepted]) assert.ok(ids.has(id), `${id} runs after the restart`);
    for (const id of running)
      assert.equal(leased.find((l) => l.record.id === id)?.record.attempt, 2, "the running call runs again");
    await store.close();
  });

  it("does not keep its process alive when it is left open (its writer thread is idle)", async () => {
    const dir = await scratch();
    const child = spawn(process.execPath, [CHILD, join(dir, "fennec.db"), "once"], { stdio: "ignore" });
    // Only a process that hangs meets this deadline; it is then killed and the test fails.
    const deadline = setTimeout(() => child.kill("SIGKILL"), GENEROUS_MS);
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
      child.once("exit", (c, s) => resolve([c, s])),
    );
    clearTimeout(deadline);
    assert.deepEqual([code, signal], [0, null], "it ended by itself");
  });
});
