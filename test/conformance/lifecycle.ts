import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { FennecError } from "../../src/core/errors.js";
import type { InvokeRequest } from "../../src/core/types.js";
import type { FunctionConfig } from "../../src/config/function-config.js";
import type { SandboxDriver } from "../../src/sandbox/contract.js";
import type { Instance } from "../../src/sandbox/instance.js";
import { leftoversOf } from "./leftovers.js";

/** A case a driver cannot run, and why: the reason is the skip's message. */
export interface Skip {
  readonly skip: string;
}

/** A function whose instance exits on its own, and the exit code it reports (when it can know it). */
export interface Dying {
  readonly config: FunctionConfig;
  readonly exitCode?: number;
}

/** What a driver's conformance file gives the lifecycle cases, each one or a skip with its reason. */
export interface LifecycleFixture {
  readonly driver: SandboxDriver;
  readonly echo: FunctionConfig;
  readonly hang: FunctionConfig;
  /** Its invocation makes the sandbox exit on its own (e.g. a handler that calls `process.exit(3)`). */
  readonly crash: Dying | Skip;
  /** Its sandbox exits before it is ready. */
  readonly failedStart: Dying | Skip;
  /** Its invocation exceeds its memory limit; required when the driver declares `oomDetection`. */
  readonly oom?: FunctionConfig | Skip;
  /** What only this driver can leave of an instance (a container in an engine, a runtime's state). */
  readonly leftovers?: (instanceId: string) => Promise<string[]>;
  /** What only this driver can leave once all its instances are gone (taps in a namespace). */
  readonly driverLeftovers?: () => Promise<string[]>;
}

export interface LifecycleEnv {
  readonly fixture: () => LifecycleFixture;
  /** A new instance of the suite (with a fresh id), not started yet. */
  readonly create: (config: FunctionConfig) => Instance;
  /** Every instance the suite has made so far. */
  readonly instances: readonly Instance[];
  readonly request: () => InvokeRequest;
}

const isSkip = (value: object): value is Skip => "skip" in value;

/**
 * The cases about an instance's whole life that every driver shares: it releases everything it
 * held however it stops, and a sandbox that dies or runs out of memory says so with a stable code
 * and its exit status.
 */
export function lifecycleCases(env: LifecycleEnv): void {
  describe("lifecycle", () => {
    const started = async (config: FunctionConfig) => {
      const inst = env.create(config);
      await inst.start();
      return inst;
    };
    const leftovers = async (inst: Instance) => {
      const fx = env.fixture();
      return [...(await leftoversOf(fx.driver.name, inst.id)), ...((await fx.leftovers?.(inst.id)) ?? [])];
    };
    const exitedWith = (code: string, dying: Dying) => (err: FennecError) => {
      assert.equal(err.code, code, err.message);
      const exitCode = err.details?.["exitCode"];
      if (dying.exitCode === undefined) assert.equal(typeof exitCode, "number", err.message);
      else assert.equal(exitCode, dying.exitCode, err.message);
      return true;
    };

    it("leaves nothing behind after close", async () => {
      const inst = await started(env.fixture().echo);
      await inst.invoke(env.request());
      await inst.close();
      assert.deepEqual(await leftovers(inst), []);
    });

    it("leaves nothing behind after destroy in the middle of an invocation", async () => {
      const inst = await started({ ...env.fixture().hang, timeoutMs: 60_000 });
      const pending = inst.invoke(env.request()).catch((err: unknown) => err);
      await inst.destroy();
      await pending;
      assert.deepEqual(await leftovers(inst), []);
    });

    it("reports dying on its own as FN_CRASHED with the exit code, and leaves nothing behind", async (t) => {
      const crash = env.fixture().crash;
      if (isSkip(crash)) return t.skip(crash.skip);
      const inst = await started(crash.config);
      await assert.rejects(inst.invoke(env.request()), exitedWith("FN_CRASHED", crash));
      await inst.stopped;
      assert.equal(inst.state, "failed");
      assert.equal(inst.failure?.code, "FN_CRASHED");
      assert.deepEqual(await leftovers(inst), []);
    });

    it("reports exiting before ready as FN_CRASHED with the exit code, and leaves nothing behind", async (t) => {
      const failed = env.fixture().failedStart;
      if (isSkip(failed)) return t.skip(failed.skip);
      const inst = env.create(failed.config);
      await assert.rejects(inst.start(), exitedWith("FN_CRASHED", failed));
      assert.equal(inst.state, "failed");
      assert.deepEqual(await leftovers(inst), []);
    });

    it("reports exceeding the memory limit as FN_OOM where the driver declares oomDetection", async (t) => {
      const fx = env.fixture();
      if (!fx.driver.capabilities.oomDetection)
        return t.skip(`the ${fx.driver.name} driver does not declare oomDetection`);
      assert.ok(
        fx.oom,
        "a driver that declares oomDetection gives an `oom` function or the reason it cannot",
      );
      if (isSkip(fx.oom)) return t.skip(fx.oom.skip);
      const inst = await started(fx.oom);
      await assert.rejects(inst.invoke(env.request()), (err: FennecError) => {
        assert.equal(err.code, "FN_OOM", err.message);
        return true;
      });
      await inst.destroy();
      assert.deepEqual(await leftovers(inst), []);
    });

    it("leaves nothing of any instance once they have all stopped", async () => {
      const fx = env.fixture();
      await Promise.all(env.instances.map((i) => i.destroy()));
      for (const inst of env.instances) assert.deepEqual(await leftovers(inst), [], inst.id);
      assert.deepEqual((await fx.driverLeftovers?.()) ?? [], []);
    });
  });
}
