import { randomUUID } from "node:crypto";
import type { CallHost, ChainedResult } from "../../src/core/call-host.js";
import { FennecError } from "../../src/core/errors.js";
import type { InvokeRequest } from "../../src/core/types.js";
import type { Instance } from "../../src/sandbox/instance.js";
import { bodyOf, bytesOf } from "./body.js";

/** A POST of `body` to `path` (with `query`), as a driver test sends it, carrying `call`. */
export function post(
  path: string,
  body: Uint8Array | string = "",
  call?: CallHost,
  query = "",
): InvokeRequest {
  const bytes = typeof body === "string" ? Buffer.from(body) : body;
  return {
    method: "POST",
    path,
    query,
    headers: { "content-length": String(bytes.byteLength) },
    body: bodyOf(bytes),
    ...(call ? { call } : {}),
  };
}

/**
 * A small in-memory stand-in for Fennec's call host, for driver tests of the handler binding: a
 * chained call runs at once on the instance the test registered for its name (with a host of its
 * own, one level deeper), `await` answers only for a call's own children, state is one map per
 * host set. Real enough to carry every request of the binding end to end; the durable one over the
 * store is `src/invocations/call-host.ts`.
 */
export class TestCalls {
  readonly state = new Map<string, Uint8Array>();
  readonly appended = new Map<string, Uint8Array[]>();
  /** Where a chained call of each name runs. */
  readonly functions = new Map<string, Instance>();
  /** The path a chained call is sent to (the handler fixture's route). */
  childPath = "/echo";
  readonly #results = new Map<string, { parent: string; result: Promise<ChainedResult> }>();

  constructor(readonly maxDepth = 4) {}

  /** A host for a call from a client (depth 0), or a chained one. */
  host(callId: string = randomUUID(), depth = 0): CallHost {
    const state = this.state;
    const appended = this.appended;
    return {
      callId,
      user: "default",
      depth,
      chain: async (name, input) => {
        if (depth + 1 > this.maxDepth) throw new FennecError("CHAIN_TOO_DEEP", `depth ${depth + 1}`);
        const instance = this.functions.get(name);
        if (!instance) throw new FennecError("FUNCTION_NOT_FOUND", `no function ${name}`);
        const child = randomUUID();
        const result = (async (): Promise<ChainedResult> => {
          const res = await instance.invoke(post(this.childPath, input, this.host(child, depth + 1)));
          return { callId: child, status: res.status, output: await bytesOf(res.body), errorCode: undefined };
        })();
        result.catch(() => undefined);
        this.#results.set(child, { parent: callId, result });
        return child;
      },
      await: async (id) => {
        const found = this.#results.get(id);
        if (!found || found.parent !== callId) throw new FennecError("CALL_NOT_FOUND", `no child ${id}`);
        return found.result;
      },
      state: {
        get: async (key) => state.get(key),
        set: async (key, value) => void state.set(key, value),
        write: async (key, offset, value) => {
          const old = state.get(key) ?? new Uint8Array();
          const next = new Uint8Array(Math.max(old.byteLength, offset + value.byteLength));
          next.set(old);
          next.set(value, offset);
          state.set(key, next);
        },
        append: async (key, value) => void appended.set(key, [...(appended.get(key) ?? []), value]),
        appended: async (key) => appended.get(key) ?? [],
        clearAppended: async (key) => void appended.delete(key),
        delete: async (key) => state.delete(key),
      },
    };
  }
}
