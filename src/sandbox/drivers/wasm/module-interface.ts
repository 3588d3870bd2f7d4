import { FennecError } from "../../../core/errors.js";
import { isFaasmImport } from "./faasm-names.js";
import { readU32 } from "./memory-limit.js";

/** The only import namespace the wasm sandbox grants. */
export const GRANTED_IMPORT_MODULE = "wasi_snapshot_preview1";

const KINDS = ["function", "table", "memory", "global", "tag"] as const;
type Kind = (typeof KINDS)[number];

export interface ModuleInterface {
  readonly imports: ReadonlyArray<{ module: string; name: string; kind: Kind }>;
  readonly exports: ReadonlyArray<{ name: string; kind: Kind }>;
}

/**
 * Reads a module's imports and exports from its bytes (sections 2 and 7), without compiling it:
 * the check of what a module asks for costs a walk over its section headers, whatever its size.
 * Call it on bytes `WebAssembly.validate` accepted; malformed input is still refused, not trusted.
 */
export function moduleInterface(bytes: Uint8Array, what: string): ModuleInterface {
  const bad = (why: string) => new FennecError("FN_BAD_MODULE", `${what}: ${why}`);
  const imports: Array<{ module: string; name: string; kind: Kind }> = [];
  const exports: Array<{ name: string; kind: Kind }> = [];
  let pos = 8;
  const u32 = (): number => {
    const [v, next] = readU32(bytes, pos);
    pos = next;
    return v;
  };
  const name = (): string => {
    const len = u32();
    if (pos + len > bytes.length) throw bad("truncated name");
    const s = Buffer.from(bytes.buffer, bytes.byteOffset + pos, len).toString("utf8");
    pos += len;
    return s;
  };
  const kind = (): Kind => {
    const k = KINDS[bytes[pos++]!];
    if (!k) throw bad("unknown import or export kind");
    return k;
  };
  const limits = () => {
    const flags = bytes[pos++]!;
    u32();
    if (flags & 0x01) u32();
  };
  try {
    while (pos < bytes.length) {
      const id = bytes[pos++]!;
      const size = u32();
      const end = pos + size;
      if (end > bytes.length) throw bad(`truncated section ${id}`);
      if (id === 2) {
        for (let n = u32(); n > 0; n--) {
          const module = name();
          const field = name();
          const k = kind();
          if (k === "function") u32();
          else if (k === "memory") limits();
          else if (k === "global")
            pos += 2; // value type, mutability
          else {
            pos++; // a table's element type, a tag's attribute
            if (k === "table") limits();
            else u32();
          }
          imports.push({ module, name: field, kind: k });
        }
      } else if (id === 7) {
        for (let n = u32(); n > 0; n--) {
          const field = name();
          const k = kind();
          u32();
          exports.push({ name: field, kind: k });
        }
      }
      pos = end;
    }
  } catch (err) {
    if (err instanceof FennecError) throw err;
    throw bad((err as Error).message);
  }
  return { imports, exports };
}

/**
 * Whether a module is a Faasm function: it imports one of Faasm's host calls (`env.__faasm_*`).
 * Its input is then the request body and its output the response (faasm-imports.ts), not WAGI's
 * stdin and stdout, and it never runs on the main thread (a host call has effects outside the
 * sandbox, so a call moved from there to an executor must not run again).
 */
export function isFaasmModule({ imports }: ModuleInterface): boolean {
  return imports.some((i) => i.kind === "function" && isFaasmImport(i.module, i.name));
}

/**
 * Checks a module against what the sandbox grants. Used at upload, at deploy and at load, so a
 * hostile or broken module is refused with the same words everywhere.
 */
export function checkInterface({ imports, exports }: ModuleInterface, what: string): void {
  const forbidden = imports
    .filter(
      (i) =>
        i.kind !== "function" || (i.module !== GRANTED_IMPORT_MODULE && !isFaasmImport(i.module, i.name)),
    )
    .map((i) => `${i.module}.${i.name} (${i.kind})`);
  if (forbidden.length > 0) {
    throw new FennecError(
      "FN_BAD_MODULE",
      `${what}: imports ${forbidden.join(", ")}, which the wasm sandbox does not grant (only ${GRANTED_IMPORT_MODULE} functions and Faasm's env.__faasm_* host calls)`,
    );
  }
  const kinds = new Map(exports.map((e) => [e.name, e.kind]));
  if (kinds.get("_start") !== "function")
    throw new FennecError(
      "FN_BAD_MODULE",
      `${what}: exports no _start function (build it as a WASI command)`,
    );
  if (kinds.get("memory") !== "memory") throw new FennecError("FN_BAD_MODULE", `${what}: exports no memory`);
}
