/**
 * What a running call may ask of Fennec: chain calls to other functions of its user, await them,
 * and read and write its user's state (Faasm's host interface, SnapFaaS's host store). A driver
 * gets one per call in `InvokeRequest.call` and exposes it to the guest its own way: host imports
 * for WebAssembly, a binding over the sandbox's transport for fetch handlers. Drivers never see
 * the store or the scheduler behind it.
 */

/** The finished child as the caller sees it. */
export interface ChainedResult {
  readonly callId: string;
  /** The child's HTTP status; 0 when it never answered. */
  readonly status: number;
  /** Its response body (bounded by the async result limit). */
  readonly output: Uint8Array;
  /** Why it failed, when it did (a stable Fennec code). */
  readonly errorCode: string | undefined;
}

export interface CallHost {
  /** This call's id (its record's), the parent of what it chains. */
  readonly callId: string;
  /** The user whose functions it may call and whose state it sees. */
  readonly user: string;
  /** How deep in a chain this call is: 0 for a call from a client. */
  readonly depth: number;
  /**
   * Queues an async call of `name` (a function of the same user) with `input` as its body and
   * returns its id at once. Refused (a FennecError) past the chain depth limit, for another
   * user's function, or for one that does not exist.
   */
  chain(name: string, input: Uint8Array): Promise<string>;
  /**
   * Waits for a call this call chained. While it waits, the caller's slot does not count against
   * its function's instance limits, so a child of the same function can still run; when nothing
   * can run it (the memory budget is spent), the await fails with a code instead of hanging.
   * `signal` gives up waiting (the caller ended): the await rejects and lends nothing more.
   */
  await(callId: string, signal?: AbortSignal): Promise<ChainedResult>;
  readonly state: {
    get(key: string): Promise<Uint8Array | undefined>;
    set(key: string, value: Uint8Array): Promise<void>;
    write(key: string, offset: number, value: Uint8Array): Promise<void>;
    append(key: string, value: Uint8Array): Promise<void>;
    appended(key: string): Promise<Uint8Array[]>;
    clearAppended(key: string): Promise<void>;
    delete(key: string): Promise<boolean>;
  };
}
