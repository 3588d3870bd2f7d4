import { timeOrderedUuid } from "../core/call-id.js";
import type { CallHost, ChainedResult } from "../core/call-host.js";
import { FennecError } from "../core/errors.js";
import { isValidName, quoteForMessage } from "../core/names.js";
import { functionKey, type FunctionId } from "../core/types.js";
import type { InvocationStore } from "../store/contract.js";
import type { CallHostFactory } from "./invocations.js";

/**
 * The stored request header that carries a chained call's depth. The gateway strips it from
 * clients' requests (server.ts), so only a chain sets it and a client cannot forge a depth.
 */
export const CHAIN_DEPTH_HEADER = "x-fennec-chain-depth";

/** The depth a stored request was chained at: 0 for a client's call (no header). */
export function chainDepthOf(headers: Readonly<Record<string, string>>): number {
  const n = Number(headers[CHAIN_DEPTH_HEADER]);
  return Number.isSafeInteger(n) && n > 0 ? n : 0;
}

/** What the call host needs of the scheduler: nothing else of it (see scheduler.ts). */
export interface ChainScheduler {
  /** The function's config, or FUNCTION_NOT_FOUND. */
  configOf(id: FunctionId): unknown;
  /** While a call awaits, its slot is lent (not counted against its function's limits). */
  lend(callId: string): () => void;
  /** Whether a call of `key` can be placed now or once running (not awaiting) calls end. */
  canPlace(key: string): boolean;
}

export interface CallHostLimits {
  /** Deepest chain: a call at this depth may not chain (which also ends cycles). */
  readonly maxDepth: number;
  /** Largest state value (and largest appended element, and offset + length of a write). */
  readonly maxStateValueBytes: number;
  /** Longest state key, in UTF-8 bytes. */
  readonly maxStateKeyBytes: number;
  /** Largest input a call may chain with. */
  readonly maxChainInputBytes: number;
  /** How often an await looks whether its child can still be placed at all. */
  readonly capacityCheckMs: number;
  /** How long a child must stay unplaceable before the await gives up with CHAIN_NO_CAPACITY. */
  readonly noCapacityAfterMs: number;
}

export const DEFAULT_CALL_HOST_LIMITS: CallHostLimits = {
  maxDepth: 16,
  maxStateValueBytes: 16 * 2 ** 20,
  maxStateKeyBytes: 256,
  maxChainInputBytes: 16 * 2 ** 20,
  capacityCheckMs: 100,
  noCapacityAfterMs: 1000,
};

/** The composition root's factory: one CallHost per recorded call. */
export function callHostFactory(
  store: InvocationStore,
  scheduler: ChainScheduler,
  limits: Partial<CallHostLimits> = {},
  wakeEngine: () => void = () => {},
): CallHostFactory {
  const l = { ...DEFAULT_CALL_HOST_LIMITS, ...limits };
  return (callId, user, depth) => new StoreCallHost(store, scheduler, l, callId, user, depth, wakeEngine);
}

/** Checks a state key: non-empty, bounded, no NUL (it is a SQL text value and a URL segment). */
export function checkStateKey(key: string, maxBytes: number): void {
  if (key.length === 0 || key.includes("\0"))
    throw new FennecError("BAD_REQUEST", `invalid state key ${quoteForMessage(key)}`);
  const bytes = Buffer.byteLength(key, "utf8");
  if (bytes > maxBytes)
    throw new FennecError(
      "STATE_TOO_LARGE",
      `state key of ${bytes} bytes is longer than the limit of ${maxBytes} bytes`,
    );
}

export function checkStateSize(bytes: number, maxBytes: number, what: string): void {
  if (bytes > maxBytes)
    throw new FennecError(
      "STATE_TOO_LARGE",
      `${what} of ${bytes} bytes is larger than the limit of ${maxBytes} bytes`,
    );
}

/**
 * A running call's host over the invocation store. A chained call is an async call with
 * `parentId` (the async engine runs it like any other); awaiting it is waiting for its record to
 * finish. While the caller awaits, its slot is lent (see `Scheduler.lend`), so a child of the
 * same function can get an instance even at max-instances; when the child cannot be placed at
 * all (the memory budget is spent by awaiting callers), the await fails with CHAIN_NO_CAPACITY.
 */
export class StoreCallHost implements CallHost {
  readonly #store: InvocationStore;
  readonly #scheduler: ChainScheduler;
  readonly #limits: CallHostLimits;
  /**
   * Wakes the async engine that runs chained calls: when one is queued, and when a caller lends
   * its slot (the engine may have skipped the child's function as full a moment before).
   */
  readonly #wake: () => void;
  /**
   * Child call id -> its function key: a call may await only what it chained. Made at the first
   * chain: every sync call gets a host, and most never chain.
   */
  #children: Map<string, string> | undefined;

  constructor(
    store: InvocationStore,
    scheduler: ChainScheduler,
    limits: CallHostLimits,
    readonly callId: string,
    readonly user: string,
    readonly depth: number,
    wake: () => void = () => {},
  ) {
    this.#wake = wake;
    this.#store = store;
    this.#scheduler = scheduler;
    this.#limits = limits;
  }

  async chain(name: string, input: Uint8Array): Promise<string> {
    const id = this.#target(name);
    const key = functionKey(id);
    if (this.depth + 1 > this.#limits.maxDepth)
      throw new FennecError(
        "CHAIN_TOO_DEEP",
        `${key}: a chain may be at most ${this.#limits.maxDepth} calls deep (this call is at depth ${this.depth})`,
      );
    checkStateSize(input.byteLength, this.#limits.maxChainInputBytes, "a chained call's input");
    // FUNCTION_NOT_FOUND (or its broken config's error) comes from here.
    await this.#scheduler.configOf(id);
    const now = Date.now();
    const callId = timeOrderedUuid(now);
    await this.#store.enqueue({
      id: callId,
      function: key,
      parentId: this.callId,
      request: {
        method: "POST",
        path: "/",
        query: "",
        headers: {
          "content-type": "application/octet-stream",
          "content-length": String(input.byteLength),
          [CHAIN_DEPTH_HEADER]: String(this.depth + 1),
        },
        body: input,
      },
      submittedAt: now,
    });
    (this.#children ??= new Map()).set(callId, key);
    this.#wake();
    return callId;
  }

  /** `name` or `user/name`; another user's function is refused. */
  #target(name: string): FunctionId {
    const parts = name.split("/");
    const [user, fn] = parts.length === 2 ? [parts[0]!, parts[1]!] : [this.user, name];
    if (parts.length > 2 || !isValidName(user) || !isValidName(fn))
      throw new FennecError("BAD_NAME", `cannot chain ${quoteForMessage(name)}: not a function name`);
    if (user !== this.user)
      throw new FennecError(
        "CHAIN_OTHER_USER",
        `a function of user ${this.user} may not call ${user}/${fn}: chaining stays within one user`,
      );
    return { user, name: fn };
  }

  async await(childId: string, signal?: AbortSignal): Promise<ChainedResult> {
    const key = this.#children?.get(childId);
    if (key === undefined)
      throw new FennecError(
        "CALL_NOT_FOUND",
        `call ${quoteForMessage(childId)} was not chained by this call (${this.callId})`,
      );
    const stop = new AbortController();
    const gaveUp = () => stop.abort(signal?.reason);
    if (signal?.aborted) gaveUp();
    signal?.addEventListener("abort", gaveUp, { once: true });
    const release = this.#scheduler.lend(this.callId);
    this.#wake();
    try {
      const record = await Promise.race([
        this.#store.whenFinished(childId, stop.signal),
        this.#watchCapacity(childId, key, stop.signal),
      ]);
      const response = await this.#store.response(childId);
      // A store may give a missing code as null: the result says undefined.
      const code = record.errorCode ?? undefined;
      const noCapacity = code === "NO_CAPACITY" || code === "QUEUE_TIMEOUT";
      return {
        callId: childId,
        status: response?.status ?? record.status ?? 0,
        output: response?.body ?? new Uint8Array(0),
        errorCode: noCapacity ? "CHAIN_NO_CAPACITY" : code,
      };
    } finally {
      signal?.removeEventListener("abort", gaveUp);
      stop.abort();
      release();
    }
  }

  /**
   * Rejects with CHAIN_NO_CAPACITY once the child, still queued, has been unplaceable for a while
   * (every instance that could serve it is held by an awaiting caller and the memory budget has no
   * room for another); never resolves otherwise.
   */
  #watchCapacity(childId: string, key: string, signal: AbortSignal): Promise<never> {
    return new Promise<never>((_, reject) => {
      let since: number | undefined;
      const timer = setInterval(() => {
        if (this.#scheduler.canPlace(key)) {
          since = undefined;
          return;
        }
        since ??= performance.now();
        if (performance.now() - since < this.#limits.noCapacityAfterMs) return;
        void this.#store.get(childId).then((record) => {
          if (signal.aborted || record?.state !== "queued") return;
          reject(
            new FennecError(
              "CHAIN_NO_CAPACITY",
              `${key}: the chained call ${childId} cannot be placed: every instance is held by an awaiting caller and the node's memory budget has no room for another`,
            ),
          );
        }, reject);
      }, this.#limits.capacityCheckMs);
      signal.addEventListener("abort", () => clearInterval(timer), { once: true });
    });
  }

  readonly state = {
    get: async (key: string): Promise<Uint8Array | undefined> => {
      this.#key(key);
      return await this.#store.stateGet(this.user, key);
    },
    set: async (key: string, value: Uint8Array): Promise<void> => {
      this.#key(key);
      checkStateSize(value.byteLength, this.#limits.maxStateValueBytes, "a state value");
      return await this.#store.stateSet(this.user, key, value);
    },
    write: async (key: string, offset: number, value: Uint8Array): Promise<void> => {
      this.#key(key);
      if (!Number.isSafeInteger(offset) || offset < 0)
        throw new FennecError("BAD_REQUEST", `invalid state offset ${offset}`);
      checkStateSize(offset + value.byteLength, this.#limits.maxStateValueBytes, "a state value");
      return await this.#store.stateWrite(this.user, key, offset, value);
    },
    append: async (key: string, value: Uint8Array): Promise<void> => {
      this.#key(key);
      checkStateSize(value.byteLength, this.#limits.maxStateValueBytes, "an appended state element");
      return await this.#store.stateAppend(this.user, key, value);
    },
    appended: async (key: string): Promise<Uint8Array[]> => {
      this.#key(key);
      return await this.#store.stateAppended(this.user, key);
    },
    clearAppended: async (key: string): Promise<void> => {
      this.#key(key);
      return await this.#store.stateClearAppended(this.user, key);
    },
    delete: async (key: string): Promise<boolean> => {
      this.#key(key);
      return await this.#store.stateDelete(this.user, key);
    },
  };

  #key(key: string): void {
    checkStateKey(key, this.#limits.maxStateKeyBytes);
  }
}
