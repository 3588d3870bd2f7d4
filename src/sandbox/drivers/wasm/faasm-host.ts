/**
 * The main thread's side of a Faasm function's host calls (faasm-imports.ts sends them over
 * host-channel.ts): one session per job, serving through the call's CallHost. Faasm's call ids
 * are small integers; a session numbers the calls it chained and keeps their Fennec ids.
 */
import type { CallHost } from "../../../core/call-host.js";
import { FennecError, toFennecError } from "../../../core/errors.js";
import type { HostReply, HostRequest } from "./host-channel.js";

/**
 * Node-wide read/write locks on state keys (Faasm's `lock_state_read/write`): a writer waits for
 * readers and the writer before it, readers share. Held locks are released when the call ends,
 * however it ends, so a call that forgets to unlock (or is killed) blocks others only until then.
 */
export class StateLocks {
  readonly #held = new Map<string, { readers: number; writer: boolean; waiting: Array<() => boolean> }>();

  acquire(key: string, mode: "read" | "write"): Promise<void> {
    const lock = this.#held.get(key) ?? { readers: 0, writer: false, waiting: [] };
    this.#held.set(key, lock);
    const take = (): boolean => {
      if (lock.writer || (mode === "write" && lock.readers > 0)) return false;
      if (mode === "write") lock.writer = true;
      else lock.readers++;
      return true;
    };
    // First come, first served: no one overtakes a waiting writer.
    if (lock.waiting.length === 0 && take()) return Promise.resolve();
    return new Promise((resolve) => lock.waiting.push(() => take() && (resolve(), true)));
  }

  release(key: string, mode: "read" | "write"): void {
    const lock = this.#held.get(key);
    if (!lock) return;
    if (mode === "write") lock.writer = false;
    else lock.readers = Math.max(0, lock.readers - 1);
    while (lock.waiting.length > 0 && lock.waiting[0]!()) lock.waiting.shift();
    if (!lock.writer && lock.readers === 0 && lock.waiting.length === 0) this.#held.delete(key);
  }
}

const NO_CALL_HOST = () =>
  new FennecError(
    "STORE_UNAVAILABLE",
    "this call has no call host (Fennec runs without its invocation store): it cannot chain, await or use state",
  );

/** What an awaited child's outcome is to the guest: 0 when it answered 2xx, else its status (or 1). */
export function returnCode(status: number, errorCode: string | undefined): number {
  if (!errorCode && status >= 200 && status < 300) return 0;
  return status > 0 ? status : 1;
}

export class FaasmSession {
  readonly #call: CallHost | undefined;
  readonly #locks: StateLocks;
  /** Faasm's call id (1, 2, ...) -> the chained call's Fennec id. */
  readonly #chained = new Map<number, string>();
  readonly #held: Array<{ key: string; mode: "read" | "write" }> = [];
  /** Aborted when the job ends: an await still waiting then gives up (and its slot's loan). */
  readonly #ending = new AbortController();
  #ended = false;

  constructor(call: CallHost | undefined, locks: StateLocks) {
    this.#call = call;
    this.#locks = locks;
  }

  /** Serves one request; a failure becomes the reply that stops the guest with its code. */
  async serve(request: HostRequest): Promise<HostReply> {
    try {
      return await this.#serve(request);
    } catch (err) {
      const e = toFennecError(err);
      return { ok: false, code: e.code, message: e.message };
    }
  }

  async #serve(r: HostRequest): Promise<HostReply> {
    const call = this.#call;
    if (!call) throw NO_CALL_HOST();
    switch (r.op) {
      case "chain": {
        const id = await call.chain(r.name, r.input);
        const handle = this.#chained.size + 1;
        this.#chained.set(handle, id);
        return { ok: true, value: handle };
      }
      case "await": {
        const id = this.#chained.get(r.id);
        if (id === undefined)
          throw new FennecError("CALL_NOT_FOUND", `awaited call ${r.id}, which this call did not chain`);
        const result = await call.await(id, this.#ending.signal);
        // A child that could not be placed at all fails its caller, rather than look like its answer.
        if (result.errorCode === "CHAIN_NO_CAPACITY")
          throw new FennecError("CHAIN_NO_CAPACITY", `chained call ${id} could not be placed: no capacity`);
        const value = returnCode(result.status, result.errorCode);
        return { ok: true, value, bytes: r.output ? new Uint8Array(result.output) : undefined };
      }
      case "state-get": {
        const value = await call.state.get(r.key);
        return { ok: true, bytes: value ? new Uint8Array(value) : undefined };
      }
      case "state-set":
        await call.state.set(r.key, r.value);
        return { ok: true };
      case "state-write":
        await call.state.write(r.key, r.offset, r.value);
        return { ok: true };
      case "state-append":
        await call.state.append(r.key, r.value);
        return { ok: true };
      case "state-appended": {
        const list = await call.state.appended(r.key);
        return { ok: true, list: list.map((b) => new Uint8Array(b)) };
      }
      case "state-clear-appended":
        await call.state.clearAppended(r.key);
        return { ok: true };
      case "lock":
        return this.#lock(call.user, r.key, r.mode, r.release);
    }
  }

  async #lock(user: string, key: string, mode: "read" | "write", release: boolean): Promise<HostReply> {
    const k = `${user}\0${key}`;
    if (release) {
      const i = this.#held.findIndex((h) => h.key === k && h.mode === mode);
      if (i >= 0) {
        this.#held.splice(i, 1);
        this.#locks.release(k, mode);
      }
      return { ok: true };
    }
    await this.#locks.acquire(k, mode);
    // The call ended while it waited (its executor was stopped): the lock goes straight back.
    if (this.#ended) this.#locks.release(k, mode);
    else this.#held.push({ key: k, mode });
    return { ok: true };
  }

  /** The job ended: every lock it still holds is released. */
  end(): void {
    this.#ended = true;
    this.#ending.abort(new FennecError("CALL_STATE", "the call ended while it awaited a chained call"));
    for (const h of this.#held.splice(0)) this.#locks.release(h.key, h.mode);
  }
}
