import { join } from "node:path";
import { DEFAULT_ASYNC, type FunctionConfig, type SandboxConfig } from "../../src/config/function-config.js";
import { ROOT } from "./paths.js";

/** A FunctionConfig built in memory, for tests that drive the scheduler or a driver directly. */
export function testConfig(
  overrides: Partial<Omit<FunctionConfig, "sandbox">> & { sandbox?: SandboxConfig } = {},
): FunctionConfig {
  const name = overrides.id?.name ?? "fn";
  return {
    id: { user: "default", name },
    key: `default/${name}`,
    dir: "/nonexistent",
    file: "/nonexistent/function.toml",
    keepaliveMs: 60_000,
    concurrentRequests: 1,
    singleUse: false,
    timeoutMs: 30_000,
    minInstances: 0,
    maxInstances: 4,
    maxQueue: 100,
    queueTimeoutMs: 30_000,
    forwardCredentials: false,
    async: DEFAULT_ASYNC,
    sandbox: {
      kind: "container",
      image: "fake",
      handler: undefined,
      memoryMiB: 64,
      runtime: undefined,
      env: {},
      pids: 1024,
      network: "none",
    },
    revision: "r1",
    ...overrides,
  };
}

/** An `[oci]` function running the process fixture (`test/fixtures/process/server.mjs`) in `mode`. */
export function ociFixtureConfig(
  mode: string,
  runtime: "runc" | "runsc",
  opts: { name?: string; memoryMiB?: number; pids?: number; timeoutMs?: number } = {},
): FunctionConfig {
  const name = opts.name ?? mode;
  return testConfig({
    id: { user: "default", name },
    key: `default/${name}`,
    dir: join(ROOT, "test", "fixtures", "process"),
    ...(opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs }),
    sandbox: {
      kind: "oci",
      command: [process.execPath, "server.mjs", mode],
      handler: undefined,
      runtime,
      env: {},
      memoryMiB: opts.memoryMiB ?? 256,
      pids: opts.pids ?? 1024,
      rootfs: "shared",
    },
  });
}
