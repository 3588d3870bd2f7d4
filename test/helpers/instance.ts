import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import type { InvokeRequest } from "../../src/core/types.js";
import type { FunctionConfig } from "../../src/config/function-config.js";
import type { SandboxDriver } from "../../src/sandbox/contract.js";
import { Instance } from "../../src/sandbox/instance.js";
import { ReadinessHub } from "../../src/sandbox/readiness.js";
import { bodyOf } from "./body.js";

/** Starts one instance of `config` on `driver` through the shared lifecycle, as the scheduler would. */
export async function startInstance(
  driver: SandboxDriver,
  config: FunctionConfig,
  opts: { hub?: ReadinessHub; callbackBase?: string; startTimeoutMs?: number } = {},
): Promise<Instance> {
  const inst = new Instance({
    id: `${driver.name}-${Math.random().toString(36).slice(2)}`,
    driver,
    config,
    origin: "cold",
    hub: opts.hub ?? new ReadinessHub(),
    callbackBase: opts.callbackBase ?? "unused",
    startTimeoutMs: opts.startTimeoutMs ?? 60_000,
  });
  await inst.start();
  return inst;
}

/** A GET with no body, for driver tests. */
export function emptyGet(query = ""): InvokeRequest {
  return { method: "GET", path: "/", query, headers: { "content-length": "0" }, body: bodyOf() };
}

/** A loopback port that accepts and drops connections: a target a sandbox must not reach. */
export async function loopbackTarget(): Promise<{ port: number; close: () => Promise<void> }> {
  const server = createServer((s) => s.destroy());
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise((r) => server.close(() => r())),
  };
}
