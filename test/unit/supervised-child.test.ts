import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { FennecError } from "../../src/core/errors.js";
import { awaitReady } from "../../src/sandbox/await-ready.js";
import { CleanupStack } from "../../src/sandbox/cleanup-stack.js";
import {
  exitFromStatus,
  fromChildProcess,
  SupervisedChild,
  type SupervisedChildOptions,
} from "../../src/sandbox/supervised-child.js";
import { waitFor } from "../helpers/wait.js";

/** A real child running `script` (Node), in its own process group as the drivers start theirs. */
const node = (script: string, over: Partial<SupervisedChildOptions> = {}) => {
  const child = spawn(process.execPath, ["-e", script], {
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  return new SupervisedChild({
    child: fromChildProcess(child, { group: true }),
    what: "test child",
    ...over,
  });
};
const SLEEP = "setInterval(() => {}, 1000)";
const noCallback = () => Promise.reject(new Error("no callback here"));

describe("CleanupStack", () => {
  it("runs its steps newest first, exactly once, whoever asks and however many times", async () => {
    const order: string[] = [];
    const stack = new CleanupStack();
    stack.defer(() => order.push("run dir"));
    stack.defer(async () => order.push("cgroup"));
    stack.defer(() => order.push("transport"));
    await Promise.all([stack.run(), stack.run()]);
    await stack.run();
    assert.deepEqual(order, ["transport", "cgroup", "run dir"]);
  });

  it("runs every step when one fails, then rethrows the first failure", async () => {
    const order: string[] = [];
    const stack = new CleanupStack();
    stack.defer(() => order.push("run dir"));
    stack.defer(() => {
      throw new Error("umount failed");
    });
    stack.defer(() => order.push("transport"));
    await assert.rejects(stack.run(), /umount failed/);
    assert.deepEqual(order, ["transport", "run dir"]);
  });

  it("runs a step deferred after it ran at once", async () => {
    const stack = new CleanupStack();
    await stack.run();
    let ran = false;
    await new Promise<void>((resolve) =>
      stack.defer(() => {
        ran = true;
        resolve();
      }),
    );
    assert.ok(ran);
  });
});

describe("exit statuses", () => {
  it("use one convention, 128 + n for signal n, for processes and runtimes alike", async () => {
    const killed = node(SLEEP);
    await killed.destroy();
    assert.deepEqual(await killed.exited, { exitCode: 137, signal: "SIGKILL" });
    assert.deepEqual(exitFromStatus(137), { exitCode: 137, signal: "SIGKILL" });
    assert.deepEqual(exitFromStatus(3), { exitCode: 3, signal: null });
  });
});

describe("SupervisedChild", () => {
  it("reports dying on its own as FN_CRASHED with the exit code, signal and its output", async () => {
    const child = node("console.error('missing configuration'); process.exit(3)");
    const reason = await new Promise<FennecError>((resolve) => child.onExit(resolve));
    assert.equal(reason.code, "FN_CRASHED");
    assert.deepEqual(reason.details, { exitCode: 3, signal: null });
    assert.match(reason.message, /test child exited with code 3 \(output: missing configuration\)/);
    // A listener registered after the death hears of it too.
    const late = await new Promise<FennecError>((resolve) => child.onExit(resolve));
    assert.equal(late, reason);
    await child.destroy();
  });

  it("names the signal that killed it", async () => {
    const child = node("process.kill(process.pid, 'SIGSEGV')");
    const reason = await new Promise<FennecError>((resolve) => child.onExit(resolve));
    assert.equal(reason.code, "FN_CRASHED");
    assert.deepEqual(reason.details, { exitCode: 139, signal: "SIGSEGV" });
    assert.match(reason.message, /was killed by SIGSEGV/);
    await child.destroy();
  });

  it("asks the driver's probe whether an exit was an OOM kill", async () => {
    const child = node("process.kill(process.pid, 'SIGKILL')", {
      memoryMiB: 64,
      oomKilled: async (exit) => exit.signal === "SIGKILL",
    });
    const reason = await new Promise<FennecError>((resolve) => child.onExit(resolve));
    assert.equal(reason.code, "FN_OOM");
    assert.deepEqual(reason.details, { exitCode: 137, signal: "SIGKILL", memoryMiB: 64 });
    assert.match(reason.message, /exceeded its memory limit of 64 MiB/);
    await child.destroy();
  });

  it("keeps only the last few KiB of what the child wrote", async () => {
    const child = node("process.stdout.write('x'.repeat(100000) + 'END'); process.exit(1)");
    await child.exited;
    await new Promise((r) => setImmediate(r));
    assert.ok(child.output.length <= 4096, String(child.output.length));
    assert.ok(child.output.endsWith("END"));
    await child.destroy();
  });

  it("tells no one of an exit Fennec caused, and runs its cleanup once whichever stop came", async () => {
    let cleanups = 0;
    const cleanup = new CleanupStack();
    cleanup.defer(() => cleanups++);
    const child = node(SLEEP, { cleanup });
    let told = false;
    child.onExit(() => (told = true));
    await Promise.all([child.close(), child.destroy(), child.close()]);
    await child.destroy();
    assert.equal(cleanups, 1);
    assert.equal(told, false);
  });

  it("close sends SIGTERM and SIGKILLs a child that ignores it once the grace has passed", async () => {
    const child = node("process.on('SIGTERM', () => console.log('ignoring')); console.log('up'); " + SLEEP, {
      graceMs: 300,
    });
    await waitForOutput(child, "up");
    await child.close();
    assert.deepEqual(await child.exited, { exitCode: 137, signal: "SIGKILL" });
    assert.match(child.output, /ignoring/);
  });

  it("destroy escalates a close still waiting for its grace", async () => {
    const child = node("process.on('SIGTERM', () => {}); console.log('up'); " + SLEEP, { graceMs: 60_000 });
    await waitForOutput(child, "up");
    const closing = child.close();
    await child.destroy();
    await closing;
    assert.equal((await child.exited).signal, "SIGKILL");
  });

  it("explains a broken connection by the exit that follows it, unless Fennec is stopping it", async () => {
    const dying = node("setTimeout(() => process.exit(5), 50)");
    const broken = new FennecError("FN_CRASHED", "the connection broke");
    const explained = (await dying.explain(broken)) as FennecError;
    assert.deepEqual(explained.details, { exitCode: 5, signal: null });
    const other = new FennecError("FN_TIMEOUT", "too slow");
    assert.equal(await dying.explain(other), other);
    await dying.destroy();

    const stopped = node(SLEEP);
    void stopped.destroy();
    assert.equal(await stopped.explain(broken), broken);
    await stopped.destroy();
  });
});

describe("awaitReady", () => {
  let dir = "";
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "fennec-ready-"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it("is ready once the child's socket accepts", async () => {
    const path = join(dir, "a.sock");
    const child = node(`require('node:net').createServer().listen(${JSON.stringify(path)})`);
    await awaitReady(
      child,
      { kind: "socket", path },
      { signal: new AbortController().signal, waitForCallback: noCallback },
    );
    assert.equal(child.stopping, false);
    await child.destroy();
  });

  it("is ready when the readiness callback arrives", async () => {
    let called!: () => void;
    const callback = new Promise<void>((r) => (called = r));
    const child = node(SLEEP);
    setTimeout(called, 20);
    await awaitReady(
      child,
      { kind: "callback" },
      { signal: new AbortController().signal, waitForCallback: () => callback },
    );
    await child.destroy();
  });

  it("fails with the child's exit when it dies first, and releases what it held", async () => {
    let released = false;
    const cleanup = new CleanupStack();
    cleanup.defer(() => (released = true));
    const child = node("console.error('cannot start: missing configuration'); process.exit(7)", { cleanup });
    await assert.rejects(
      awaitReady(
        child,
        { kind: "socket", path: join(dir, "never.sock") },
        { signal: new AbortController().signal, waitForCallback: noCallback },
      ),
      (err: FennecError) => {
        assert.equal(err.code, "FN_CRASHED");
        assert.deepEqual(err.details, { exitCode: 7, signal: null });
        assert.match(err.message, /missing configuration/);
        return true;
      },
    );
    assert.ok(released);
  });

  it("fails with SANDBOX_START_FAILED when the program cannot be spawned", async () => {
    const child = new SupervisedChild({
      child: fromChildProcess(spawn(join(dir, "no-such-program"), [], { stdio: ["ignore", "pipe", "pipe"] })),
      what: "test child",
    });
    await assert.rejects(
      awaitReady(
        child,
        { kind: "callback" },
        { signal: new AbortController().signal, waitForCallback: () => new Promise(() => {}) },
      ),
      { code: "SANDBOX_START_FAILED" },
    );
  });

  it("fails with the abort's reason at the deadline, stopping the socket's polling and the child", async () => {
    const deadline = new AbortController();
    const child = node(SLEEP);
    const timeout = new FennecError("FN_INIT_TIMEOUT", "not ready in time");
    setTimeout(() => deadline.abort(timeout), 50);
    await assert.rejects(
      awaitReady(
        child,
        { kind: "socket", path: join(dir, "late.sock") },
        { signal: deadline.signal, waitForCallback: noCallback },
      ),
      (err) => err === timeout,
    );
    assert.equal((await child.exited).signal, "SIGKILL");
    // Nothing polls the socket any more: one appearing now is never connected to.
    let connected = false;
    const server = createServer(() => (connected = true)).listen(join(dir, "late.sock"));
    await new Promise((r) => setTimeout(r, 100));
    server.close();
    assert.equal(connected, false);
  });
});

const waitForOutput = (child: SupervisedChild, text: string) =>
  waitFor(`the child to write ${text}`, () => child.output.includes(text));
