import { randomUUID } from "node:crypto";
import type { KV } from "@nats-io/kv";
import type { ObjectStore } from "@nats-io/obj";

/**
 * Values larger than this go to the object store, which chunks them: a NATS message is at most
 * max_payload (1 MiB by default) and a state value or body may be 16 MiB. Below it, one
 * key-value message (one round trip) holds the value.
 */
export const INLINE_MAX = 512 * 1024;

const INLINE = 0;
const POINTER = 1;

/**
 * Bytes kept in a key-value entry (or a stream message): inline with a one-byte tag, or, when
 * large, in the object store under a fresh name with the entry holding only that name. A fresh
 * name per write lets a compare-and-set on the entry decide which write won; the loser's object
 * is removed by the loser.
 */
export class Blobs {
  constructor(readonly objects: ObjectStore) {}

  /** What to store for `bytes` (writing the object first when it is large). */
  async encode(bytes: Uint8Array): Promise<Uint8Array> {
    if (bytes.byteLength <= INLINE_MAX) {
      const out = new Uint8Array(bytes.byteLength + 1);
      out[0] = INLINE;
      out.set(bytes, 1);
      return out;
    }
    const name = randomUUID();
    await this.objects.putBlob({ name }, bytes);
    const pointer = Buffer.from(JSON.stringify({ name }), "utf8");
    const out = new Uint8Array(pointer.byteLength + 1);
    out[0] = POINTER;
    out.set(pointer, 1);
    return out;
  }

  /** The bytes an encoded entry stands for; undefined when its object is gone (pruned meanwhile). */
  async decode(stored: Uint8Array): Promise<Uint8Array | undefined> {
    if (stored[0] === INLINE) return stored.subarray(1);
    const blob = await this.objects.getBlob(pointerOf(stored)!);
    return blob ?? undefined;
  }

  /** Removes the object an encoded entry points to, if any. */
  async discard(stored: Uint8Array | undefined): Promise<void> {
    const name = stored ? pointerOf(stored) : undefined;
    if (name !== undefined) await this.objects.delete(name).catch(() => undefined);
  }

  /** Puts `bytes` under `key`, then removes the object the key held before (if it was large). */
  async put(kv: KV, key: string, bytes: Uint8Array): Promise<void> {
    const before = await this.#large(kv, key);
    await kv.put(key, await this.encode(bytes));
    if (before) await this.discard(before);
  }

  /** Creates `key`; fails (a conflict) when it exists. */
  async create(kv: KV, key: string, bytes: Uint8Array): Promise<void> {
    const stored = await this.encode(bytes);
    try {
      await kv.create(key, stored);
    } catch (err) {
      await this.discard(stored);
      throw err;
    }
  }

  async get(kv: KV, key: string): Promise<Uint8Array | undefined> {
    const e = await kv.get(key);
    if (!e || e.operation !== "PUT") return undefined;
    return this.decode(e.value);
  }

  /** Deletes `key` and its object. */
  async remove(kv: KV, key: string): Promise<void> {
    const before = await this.#large(kv, key);
    await kv.delete(key);
    if (before) await this.discard(before);
  }

  async #large(kv: KV, key: string): Promise<Uint8Array | undefined> {
    const e = await kv.get(key);
    return e && e.operation === "PUT" && e.value[0] === POINTER ? e.value : undefined;
  }
}

function pointerOf(stored: Uint8Array): string | undefined {
  if (stored[0] !== POINTER) return undefined;
  return (JSON.parse(Buffer.from(stored.subarray(1)).toString("utf8")) as { name: string }).name;
}

/** A request or response as one byte string: a length-prefixed JSON head, then the body. */
export function pack(head: unknown, body: Uint8Array): Uint8Array {
  const h = Buffer.from(JSON.stringify(head), "utf8");
  const out = new Uint8Array(4 + h.byteLength + body.byteLength);
  new DataView(out.buffer).setUint32(0, h.byteLength);
  out.set(h, 4);
  out.set(body, 4 + h.byteLength);
  return out;
}

export function unpack<T>(bytes: Uint8Array): { head: T; body: Uint8Array } {
  const n = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0);
  const head = JSON.parse(Buffer.from(bytes.subarray(4, 4 + n)).toString("utf8")) as T;
  // A copy: the caller keeps the body, not the whole message buffer behind it.
  return { head, body: new Uint8Array(bytes.subarray(4 + n)) };
}
