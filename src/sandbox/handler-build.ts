import { randomBytes } from "node:crypto";
import { mkdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { FennecError } from "../core/errors.js";
import type { FunctionConfig } from "../config/function-config.js";
import { PerRevision } from "./per-revision.js";

/** Fennec's runtime for fetch-style handlers, run as `node RUNTIME BUNDLE CALLBACK`. */
export const HANDLER_RUNTIME = fileURLToPath(new URL("../runtime/handler-server.js", import.meta.url));

/** Where a function's built handler lives (ignored by the registry: a dot directory). */
function bundlePath(config: FunctionConfig): string {
  return join(config.dir, ".fennec", "build", "handler.mjs");
}

/**
 * Bundles a `.ts`/`.js` handler and everything it imports into one ES module for Node, with
 * esbuild (loaded only when a handler is built). Written to a temporary name and renamed, so an
 * instance starting meanwhile never sees half a bundle.
 */
export async function buildHandler(config: FunctionConfig, handler: string): Promise<string> {
  const { build } = await import("esbuild");
  const out = bundlePath(config);
  await mkdir(join(config.dir, ".fennec", "build"), { recursive: true });
  const tmp = `${out}.${randomBytes(6).toString("hex")}.tmp`;
  try {
    await build({
      entryPoints: [handler],
      outfile: tmp,
      bundle: true,
      format: "esm",
      platform: "node",
      target: "node20",
      logLevel: "silent",
    });
    await rename(tmp, out);
  } catch (err) {
    await rm(tmp, { force: true });
    const first = (
      err as {
        errors?: Array<{ text: string; location?: { file: string; line: number; column: number } | null }>;
      }
    ).errors?.[0];
    const where = first?.location
      ? ` at ${first.location.file}:${first.location.line}:${first.location.column}`
      : "";
    throw new FennecError(
      "FN_BAD_MODULE",
      `${config.key}: cannot build the handler${where}: ${first?.text ?? (err as Error).message}`,
    );
  }
  return out;
}

/** Built bundles per function revision (which covers the handler file's stamp): each built once. */
export class HandlerBundles {
  readonly #bundles = new PerRevision<string>();

  get(config: FunctionConfig, handler: string): Promise<string> {
    return this.#bundles.get(config, () => buildHandler(config, handler));
  }
}
