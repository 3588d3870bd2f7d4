import type { SandboxKind } from "../kind.js";
import { SandboxKinds } from "../kinds.js";
import { containerKind } from "./container/kind.js";
import { ociKind } from "./oci/kind.js";
import { processKind } from "./process/kind.js";
import { vmKind } from "./vm/kind.js";
import { wasmKind } from "./wasm/kind.js";

/**
 * Where sandbox kinds are registered: the function.toml schema, the loader, the admin API,
 * `fennec build`, the drivers and their command-line flags all derive from this list.
 * Adding a sandbox is its folder (with its `kind.ts`) and one entry here (docs/architecture.md).
 */
export const SANDBOX_KINDS: readonly SandboxKind[] = [wasmKind, vmKind, containerKind, processKind, ociKind];

/** The registered kinds and what derives from them (the loader, flags, drivers). */
export const sandboxKinds = new SandboxKinds(SANDBOX_KINDS);
