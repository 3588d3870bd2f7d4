import { readFile } from "node:fs/promises";
import { FennecError, toFennecError } from "../core/errors.js";
import type { FunctionId } from "../core/types.js";
import { formatByteSize } from "../config/byte-size.js";
import type { FunctionConfig } from "../config/function-config.js";
import { wasmModuleOf, type DeployCheck, type DirectoryRegistry } from "../registry/registry.js";
import type { Scheduler } from "../scheduler/scheduler.js";
import { functionId } from "./routes.js";

/** One row of `GET /system/functions`: the OpenFaaS FunctionStatus fields plus Fennec's own. */
export interface FunctionStatus {
  readonly name: string;
  readonly user: string;
  readonly namespace: string;
  readonly key: string;
  readonly sandbox: string | null;
  readonly image: string | null;
  readonly state: "ready" | "error";
  readonly replicas: number;
  readonly availableReplicas: number;
  readonly error: { code: string; message: string; details?: Record<string, unknown> } | null;
  readonly config: Record<string, unknown> | null;
}

function summary(c: FunctionConfig): Record<string, unknown> {
  return {
    keepalive: c.keepaliveMs / 1000,
    "concurrent-requests": c.concurrentRequests,
    "single-use": c.singleUse,
    timeout: c.timeoutMs / 1000,
    "min-instances": c.minInstances,
    "max-instances": c.maxInstances,
    // null: the gateway's limit applies (`--body-limit`; none for a streamed response).
    "max-request-body": sizeOrNull(c.maxRequestBodyBytes),
    "max-response-body": sizeOrNull(c.maxResponseBodyBytes),
    revision: c.revision,
  };
}

const sizeOrNull = (bytes: number | undefined) => (bytes === undefined ? null : formatByteSize(bytes));

/**
 * Lists every function on disk with its state; a broken one shows its error and hides nothing else.
 * A function's `image` is what its sandbox kind shows (module, image reference, kernel).
 */
export async function describeFunctions(
  registry: DirectoryRegistry,
  scheduler: Scheduler,
): Promise<FunctionStatus[]> {
  const pools = scheduler.pools();
  return (await registry.list()).map((entry) => {
    const counts = pools.get(entry.key)?.counts();
    const c = entry.config;
    const error = entry.error ?? scheduler.lastError(entry.key);
    return {
      name: entry.id.name,
      user: entry.id.user,
      namespace: entry.id.user,
      key: entry.key,
      sandbox: c?.sandbox.kind ?? null,
      image: c ? registry.loader.image(c) : null,
      state: error ? "error" : "ready",
      replicas: counts ? counts.starting + counts.ready + counts.busy : 0,
      availableReplicas: counts ? counts.ready + counts.busy : 0,
      error: error
        ? { code: error.code, message: error.message, ...(error.details ? { details: error.details } : {}) }
        : null,
      config: c ? summary(c) : null,
    };
  });
}

interface DeployDocument {
  name?: unknown;
  user?: unknown;
  toml?: unknown;
  module?: unknown;
  files?: unknown;
}

function base64(value: unknown, what: string): Uint8Array {
  if (typeof value !== "string" || !/^[A-Za-z0-9+/=\s]*$/.test(value))
    throw new FennecError("BAD_REQUEST", `${what} must be a base64 string`);
  return Buffer.from(value, "base64");
}

/** Checks an uploaded module; throws with the reason. */
export type ModuleValidator = (
  bytes: Uint8Array,
  memoryMiB: number,
  what: string,
  initialiseWithinMs?: number,
) => Promise<void>;

/**
 * What every deploy and upload must pass before it goes live, checked on the scratch copy: a
 * driver for its sandbox kind is enabled on this node (DRIVER_UNAVAILABLE otherwise, so a
 * `[process]` function cannot lie in wait for a restart with `--process`), and a wasm module is
 * one the sandbox will run, under the function's own memory limit.
 */
export function deployCheck(
  scheduler: Scheduler,
  validateModule: ModuleValidator,
  what: string,
  runsElsewhere?: (config: FunctionConfig) => boolean,
): DeployCheck {
  const check = moduleCheck(validateModule, what);
  return async (config) => {
    try {
      scheduler.driverFor(config);
    } catch (err) {
      // In a cluster a node without the sandbox still takes the deploy when a live node has it:
      // placement sends the function's calls there (docs/cluster.md).
      if (!(err instanceof FennecError && err.code === "DRIVER_UNAVAILABLE" && runsElsewhere?.(config)))
        throw err;
    }
    await check(config);
  };
}

/**
 * The part of `deployCheck` that holds on every node: the function.toml loaded (the registry does
 * that before any check) and a wasm module one the sandbox will run. A node installs a function
 * shared by another node after this check, also when it has no driver for its sandbox: it still
 * knows the function, so placement can send its calls to a node that runs it.
 */
export function moduleCheck(validateModule: ModuleValidator, what: string): DeployCheck {
  return async (config) => {
    if (config.sandbox.kind !== "wasm") return;
    const bytes = await readFile(config.sandbox.module);
    // A module that initialises itself (wizer.initialize) must do so within the function's timeout.
    const initialise = config.sandbox.preInitialise === false ? undefined : config.timeoutMs;
    await validateModule(bytes, config.sandbox.memoryMiB, what, initialise).catch((err: unknown) => {
      throw new FennecError("MODULE_INVALID", toFennecError(err).message);
    });
  };
}

/**
 * Deploys from `{"name", "user"?, "toml", "module"?: base64, "files"?: {name: base64}}`. The toml is
 * validated by the schema, then the whole function is checked in a scratch directory
 * (`deployCheck`) before it replaces the live one.
 */
export async function deployFromJson(
  body: Buffer,
  named: FunctionId | undefined,
  registry: DirectoryRegistry,
  scheduler: Scheduler,
  validateModule: ModuleValidator,
  runsElsewhere?: (config: FunctionConfig) => boolean,
): Promise<FunctionConfig> {
  let doc: DeployDocument;
  try {
    doc = JSON.parse(body.toString("utf8")) as DeployDocument;
  } catch (err) {
    throw new FennecError("BAD_REQUEST", `deploy expects a JSON document: ${(err as Error).message}`);
  }
  if (typeof doc !== "object" || doc === null)
    throw new FennecError("BAD_REQUEST", "deploy expects a JSON object");
  const id =
    named ??
    functionId(
      typeof doc.user === "string" ? doc.user : undefined,
      typeof doc.name === "string" ? doc.name : undefined,
    );
  if (typeof doc.toml !== "string")
    throw new FennecError("BAD_REQUEST", 'deploy expects "toml": the function.toml text');
  const what = `deploy of ${id.user}/${id.name}`;
  const parsed = registry.loader.parse(doc.toml, `${what}: function.toml`);
  const files = new Map<string, Uint8Array>();
  if (doc.files !== undefined) {
    if (typeof doc.files !== "object" || doc.files === null)
      throw new FennecError("BAD_REQUEST", '"files" must be an object of name -> base64');
    for (const [name, value] of Object.entries(doc.files)) files.set(name, base64(value, `files.${name}`));
  }
  if (doc.module !== undefined) {
    const moduleFile = wasmModuleOf(parsed);
    if (!moduleFile) throw new FennecError("BAD_REQUEST", '"module" is only for [wasm] functions');
    files.set(moduleFile, base64(doc.module, "module"));
  }
  return registry.deploy(id, doc.toml, files, deployCheck(scheduler, validateModule, what, runsElsewhere));
}
