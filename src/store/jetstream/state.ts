import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { FennecError } from "../../core/errors.js";
import { MAX_STATE_BYTES } from "../sqlite/state-ops.js";
import type { Blobs } from "./blobs.js";
import { stateKey, untoken, type StoreNames } from "./names.js";
import { readStream } from "./stream-read.js";

/**
 * Users and keys become subject tokens (base64url), and a subject is at most a few KiB: shorter
 * than the embedded store's 4096 characters, and said so.
 */
const MAX_KEY_LENGTH = 1024;
/** Compare-and-set rounds before a contended offset write gives up. */
const CAS_ROUNDS = 50;

function check(user: string, key: string, bytes: number): void {
  if (user.length > MAX_KEY_LENGTH || key.length > MAX_KEY_LENGTH)
    throw new FennecError(
      "STATE_TOO_LARGE",
      `a state key or user name longer than ${MAX_KEY_LENGTH} characters (the cluster's store keeps them in subject names)`,
    );
  if (!Number.isSafeInteger(bytes) || bytes < 0 || bytes > MAX_STATE_BYTES)
    throw new FennecError(
      "STATE_TOO_LARGE",
      `a state value of ${bytes} bytes is over the store's ${MAX_STATE_BYTES}`,
    );
}

const isConflict = (err: unknown): boolean =>
  /wrong last sequence|key exists|10071/i.test(String((err as Error)?.message ?? err));

/**
 * Per-user state: a value per (user, key) in a key-value bucket (large ones in the object store),
 * and each key's append log as its own subject of a stream. An offset write is a read, a patch
 * and a compare-and-set on the value's revision, tried again when another node wrote between.
 */
export class StateStore {
  constructor(
    private readonly kv: KV,
    private readonly blobs: Blobs,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly names: StoreNames,
  ) {}

  get(user: string, key: string): Promise<Uint8Array | undefined> {
    return this.blobs.get(this.kv, stateKey(user, key));
  }

  async set(user: string, key: string, value: Uint8Array): Promise<void> {
    check(user, key, value.byteLength);
    await this.blobs.put(this.kv, stateKey(user, key), value);
  }

  async write(user: string, key: string, offset: number, value: Uint8Array): Promise<void> {
    if (!Number.isSafeInteger(offset) || offset < 0)
      throw new FennecError(
        "BAD_REQUEST",
        `a state offset must be a whole number of bytes ≥ 0, got ${offset}`,
      );
    check(user, key, offset + value.byteLength);
    const k = stateKey(user, key);
    for (let round = 0; round < CAS_ROUNDS; round++) {
      const e = await this.kv.get(k);
      const live = e !== null && e.operation === "PUT";
      const old = live ? ((await this.blobs.decode(e.value)) ?? new Uint8Array(0)) : new Uint8Array(0);
      const next = new Uint8Array(Math.max(old.byteLength, offset + value.byteLength));
      next.set(old, 0);
      next.set(value, offset);
      const stored = await this.blobs.encode(next);
      try {
        if (live) await this.kv.update(k, stored, e.revision);
        else await this.kv.create(k, stored);
      } catch (err) {
        await this.blobs.discard(stored);
        if (isConflict(err)) continue;
        throw err;
      }
      if (live) await this.blobs.discard(e.value);
      return;
    }
    throw new FennecError(
      "STORE_UNAVAILABLE",
      `state ${user}/${key} is written by others too often to patch`,
    );
  }

  async append(user: string, key: string, value: Uint8Array): Promise<void> {
    check(user, key, value.byteLength);
    await this.js.publish(this.names.appendedSubject(user, key), await this.blobs.encode(value));
  }

  async appended(user: string, key: string): Promise<Uint8Array[]> {
    const stored: Uint8Array[] = [];
    await readStream(
      this.js,
      this.jsm,
      this.names.appended,
      { filter: this.names.appendedSubject(user, key) },
      (m) => {
        stored.push(m.data);
      },
    );
    const out: Uint8Array[] = [];
    for (const s of stored) {
      const v = await this.blobs.decode(s);
      if (v) out.push(new Uint8Array(v));
    }
    return out;
  }

  async clearAppended(user: string, key: string): Promise<void> {
    const subject = this.names.appendedSubject(user, key);
    const large: Uint8Array[] = [];
    await readStream(this.js, this.jsm, this.names.appended, { filter: subject }, (m) => {
      if (m.data[0] !== 0) large.push(m.data);
    });
    await this.jsm.streams.purge(this.names.appended, { filter: subject });
    for (const s of large) await this.blobs.discard(s);
  }

  async delete(user: string, key: string): Promise<boolean> {
    const k = stateKey(user, key);
    const e = await this.kv.get(k);
    if (!e || e.operation !== "PUT") return false;
    await this.blobs.remove(this.kv, k);
    return true;
  }

  async keys(user: string): Promise<string[]> {
    const out = new Set<string>();
    const prefix = stateKey(user, "").split(".").slice(0, 2).join(".");
    for await (const k of await this.kv.keys(`${prefix}.*`)) out.add(untoken(k.split(".")[2]!));
    const info = await this.jsm.streams.info(this.names.appended, {
      subjects_filter: this.names.appendedUserFilter(user),
    });
    for (const [subject, n] of Object.entries(info.state.subjects ?? {}))
      if (n > 0) out.add(untoken(subject.split(".").at(-1)!));
    return [...out].sort();
  }
}
