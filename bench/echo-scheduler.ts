/**
 * The scheduler the dispatch-cost benches drive: one function, `default/echo`, on one driver,
 * with no registry, no HTTP and a silent log (bench/dispatch-cost.ts, bench/wasm-dispatch-cost.ts).
 */
import { DEFAULT_ASYNC, type FunctionConfig } from "../src/config/function-config.js";
import { FennecError } from "../src/core/errors.js";
import { createLogger } from "../src/core/log.js";
import type { SandboxDriver } from "../src/sandbox/contract.js";
import { ReadinessHub } from "../src/sandbox/readiness.js";
import { Scheduler } from "../src/scheduler/scheduler.js";

/** `default/echo` on `sandbox`, warm for an hour, one instance taking `concurrentRequests` calls. */
export function echoConfig(sandbox: FunctionConfig["sandbox"], concurrentRequests: number): FunctionConfig {
  return {
    id: { user: "default", name: "echo" },
    key: "default/echo",
    dir: "/nonexistent",
    file: "/nonexistent/function.toml",
    keepaliveMs: 3_600_000,
    concurrentRequests,
    singleUse: false,
    timeoutMs: 30_000,
    minInstances: 0,
    maxInstances: 1,
    maxQueue: 100,
    queueTimeoutMs: 30_000,
    forwardCredentials: false,
    async: DEFAULT_ASYNC,
    sandbox,
    revision: "r1",
  };
}

/** A scheduler that knows only `config`, run by `driver`. */
export function echoScheduler(config: FunctionConfig, driver: SandboxDriver): Scheduler {
  return new Scheduler({
    configs: {
      resolve: (id) =>
        id.name === config.id.name
          ? Promise.resolve(config)
          : Promise.reject(new FennecError("FUNCTION_NOT_FOUND", "no")),
    },
    drivers: new Map([[config.sandbox.kind, driver]]),
    hub: new ReadinessHub(),
    callbackBase: () => "http://127.0.0.1:1/ready/",
    memoryBudgetMiB: 4096,
    startTimeoutMs: 30_000,
    log: createLogger("silent"),
  });
}
