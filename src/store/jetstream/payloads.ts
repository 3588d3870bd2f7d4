import { randomUUID } from "node:crypto";
import type { KV } from "@nats-io/kv";
import type { StoredRequest, StoredResponse } from "../contract.js";
import { pack, unpack, type Blobs } from "./blobs.js";
import { requestKey, responseKey } from "./names.js";

interface RequestHead {
  readonly method: string;
  readonly path: string;
  readonly query: string;
  readonly headers: Record<string, string>;
}
interface ResponseHead {
  readonly status: number;
  readonly headers: Array<[string, string]>;
}

/**
 * A call's request and result in the payloads bucket (large ones in the object store), apart
 * from its entry in the calls bucket: the mirror every node keeps of the calls holds no body.
 */
export class Payloads {
  constructor(
    private readonly kv: KV,
    private readonly blobs: Blobs,
  ) {}

  /** Stores a new call's request; a conflict (the id is taken) when one is there. */
  putRequest(id: string, r: StoredRequest): Promise<void> {
    const head: RequestHead = { method: r.method, path: r.path, query: r.query, headers: { ...r.headers } };
    return this.blobs.create(this.kv, requestKey(id), pack(head, r.body));
  }

  async request(id: string): Promise<StoredRequest | undefined> {
    const stored = await this.blobs.get(this.kv, requestKey(id));
    if (!stored) return undefined;
    const { head, body } = unpack<RequestHead>(stored);
    return { ...head, body };
  }

  /**
   * Stores a result under a fresh name (created, not put: no read of what it held first), which
   * the compare-and-set that ends the call then names. Returns the name and the bytes it counts.
   */
  async putResult(
    id: string,
    res: StoredResponse,
  ): Promise<{ readonly result: string; readonly bytes: number }> {
    const result = randomUUID();
    const head: ResponseHead = { status: res.status, headers: res.headers.map(([k, v]) => [k, v]) };
    await this.blobs.create(this.kv, responseKey(id, result), pack(head, res.body));
    return { result, bytes: res.body.byteLength + JSON.stringify(res.headers).length };
  }

  async result(id: string, result: string): Promise<StoredResponse | undefined> {
    const stored = await this.blobs.get(this.kv, responseKey(id, result));
    if (!stored) return undefined;
    const { head, body } = unpack<ResponseHead>(stored);
    return { status: head.status, headers: head.headers, body };
  }

  /** Removes what is named; a failure is left to retention (nothing refers to it any more). */
  async removeResult(id: string, result: string | undefined): Promise<void> {
    if (result !== undefined)
      await this.blobs.remove(this.kv, responseKey(id, result)).catch(() => undefined);
  }

  async removeRequest(id: string): Promise<void> {
    await this.blobs.remove(this.kv, requestKey(id)).catch(() => undefined);
  }
}
