/**
 * The module checker's thread: hashing, validation, memory capping and compilation of modules
 * happen here, never on the gateway's thread, so a module of tens of MiB being uploaded or
 * prepared does not stall other functions' calls (`WebAssembly.validate` and `new
 * WebAssembly.Module` are synchronous and take seconds on such modules).
 */
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { dirname } from "node:path";
import { parentPort } from "node:worker_threads";
import { FennecError } from "../../../core/errors.js";
import { writeFileAtomic } from "../../../registry/atomic-write.js";
import type { InlineModule } from "./inline-runner.js";
import { instrument } from "./instrument.js";
import { limitMemory } from "./memory-limit.js";
import type { CheckDone, CheckJob, ToChecker } from "./module-check-protocol.js";
import { checkInterface, isFaasmModule, moduleInterface } from "./module-interface.js";
import { INITIALIZE_EXPORT } from "./snapshot.js";
import { UnsupportedModuleError } from "./wasm-reader.js";

// Compilation is eager here too: module-cache.ts sets --no-wasm-lazy-compilation before this
// thread starts, and V8's flags are process-wide.

const port = parentPort!;

/** Node's buffers are never shared memory here; this tells the DOM-typed WebAssembly API so. */
function source(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return bytes as Uint8Array<ArrayBuffer>;
}

function readModule(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    // The code only: the path and Node's message would show callers where the registry lives.
    const code = (err as NodeJS.ErrnoException).code ?? "EIO";
    throw new FennecError("FN_BAD_MODULE", `${what}: cannot read its module (${code})`);
  }
}

/** Bytes being received for a job, by job id. */
const incoming = new Map<number, Buffer>();

async function check(job: CheckJob): Promise<Omit<CheckDone, "id" | "error">> {
  const given = incoming.get(job.id);
  incoming.delete(job.id);
  const raw = given ?? readModule(job.path!, job.what);
  const hash = createHash("sha256").update(raw).digest("hex");
  if (job.kind === "hash")
    return {
      hash,
      initialPages: 0,
      module: undefined,
      inline: undefined,
      faasm: false,
      initializer: false,
      snapshotRefusal: undefined,
    };
  let cached: Buffer | undefined;
  if (job.cacheFile) {
    try {
      cached = readFileSync(job.cacheFile.replace("%h", hash));
    } catch {
      cached = undefined; // not cached yet
    }
  }
  if (!cached && !WebAssembly.validate(source(raw)))
    throw new FennecError("FN_BAD_MODULE", `${job.what}: not a valid WebAssembly module`);
  // Capping cached bytes again changes nothing but yields the initial memory.
  const limited = limitMemory(cached ?? raw, job.maxPages, job.what);
  // Reading the interface is a walk over section headers: cheap enough to repeat for cached bytes.
  const iface = moduleInterface(limited.bytes, job.what);
  if (!cached) checkInterface(iface, job.what);
  const initializer = iface.exports.some((e) => e.name === INITIALIZE_EXPORT && e.kind === "function");
  const { runnable, snapshotRefusal } = initializer
    ? exposeGlobals(limited.bytes)
    : { runnable: limited.bytes, snapshotRefusal: undefined };
  const module = job.compile ? new WebAssembly.Module(source(runnable)) : undefined;
  // A Faasm function never runs on the main thread: no variant is made for it.
  const faasm = isFaasmModule(iface);
  const inline = job.compile && !faasm ? inlineVariant(limited.bytes) : undefined;
  // The checked bytes go to the disk cache from here: the main thread never holds a copy.
  if (job.cacheFile && !cached) {
    try {
      const file = job.cacheFile.replace("%h", hash);
      mkdirSync(dirname(file), { recursive: true });
      await writeFileAtomic(file, limited.bytes);
    } catch {
      // The disk cache only saves checking at the next start; the module itself is fine.
    }
  }
  return { hash, initialPages: limited.initialPages, module, inline, faasm, initializer, snapshotRefusal };
}

/**
 * A module that initialises itself runs with its mutable globals exported (instrument.ts, no
 * fuel), so its snapshot can keep them: clang's stack pointer, an AssemblyScript heap's top. The
 * rewrite only adds exports, so the module runs the same with or without a snapshot. The disk cache
 * keeps the bytes before this rewrite (it would refuse to add the exports twice).
 */
function exposeGlobals(bytes: Uint8Array): { runnable: Uint8Array; snapshotRefusal: string | undefined } {
  try {
    const rewritten = instrument(bytes, { fuel: false });
    if (rewritten.statefulBeyondMemory)
      return {
        runnable: bytes,
        snapshotRefusal:
          "its code can change tables or data segments (or imports them), which a snapshot does not keep",
      };
    return { runnable: rewritten.bytes, snapshotRefusal: undefined };
  } catch (err) {
    if (!(err instanceof UnsupportedModuleError)) throw err;
    return { runnable: bytes, snapshotRefusal: `its globals cannot be exposed: ${err.message}` };
  }
}

/**
 * The module instrumented for the main thread's fast path (fuel checks, exported globals). A
 * module the instrumenter cannot rewrite (an instruction it does not know) still runs, on
 * executors only: the fast path is an optimisation, never a condition.
 */
function inlineVariant(bytes: Uint8Array): InlineModule | undefined {
  try {
    const rewritten = instrument(bytes, { fuel: true });
    return {
      module: new WebAssembly.Module(source(rewritten.bytes)),
      globals: rewritten.globals,
      reusable: !rewritten.statefulBeyondMemory,
    };
  } catch {
    return undefined;
  }
}

port.on("message", (msg: ToChecker) => {
  if (msg.type === "begin") incoming.set(msg.id, Buffer.allocUnsafe(msg.size));
  else if (msg.type === "chunk") incoming.get(msg.id)?.set(msg.piece, msg.at);
  else void answer(msg);
});

async function answer(job: CheckJob): Promise<void> {
  let done: CheckDone;
  try {
    done = { id: job.id, ...(await check(job)), error: undefined };
  } catch (err) {
    const e = err as Error & { code?: unknown };
    const code = err instanceof FennecError ? err.code : "FN_BAD_MODULE";
    const message = err instanceof FennecError ? err.message : `${job.what}: ${e.message}`;
    port.postMessage({
      id: job.id,
      hash: "",
      initialPages: 0,
      module: undefined,
      inline: undefined,
      faasm: false,
      initializer: false,
      snapshotRefusal: undefined,
      error: { code, message },
    } satisfies CheckDone);
    return;
  }
  port.postMessage(done);
}
