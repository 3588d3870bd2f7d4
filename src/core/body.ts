import { Readable } from "node:stream";
import type { Body } from "./types.js";

/**
 * A body whose bytes are all in memory (a small request read whole, a small response, a buffered
 * result). It reads like any other body; a consumer that can take bytes at once (the hop's
 * request, the gateway's response) takes them with `takeWhole` and skips the stream machinery,
 * which for a small call cost more than the rest of the hop (issue 10's measurements).
 */
export class WholeBody extends Readable {
  #bytes: Buffer | null;

  constructor(bytes: Buffer) {
    super();
    this.#bytes = bytes;
    // Nothing can fail in memory; an error here is one a consumer destroyed it with to say why
    // it gave up (an answer it could not send), which must not become an uncaught exception.
    this.on("error", ignore);
  }

  override _read(): void {
    const bytes = this.#bytes;
    this.#bytes = null;
    // Yields a Buffer, so back-pressure counts bytes as from a socket; an empty body yields none.
    if (bytes && bytes.byteLength > 0) this.push(bytes);
    this.push(null);
  }

  /** How many bytes are still to be read (all of them until reading begins). */
  get size(): number {
    return this.#bytes?.byteLength ?? 0;
  }

  /**
   * The bytes, unless reading has begun; the stream is then empty: a reader that comes later gets
   * its end at once (`_read`). Not ended here: a `push(null)` before any read schedules a
   * 'readable' event on the next tick, twice per warm call (its request and its answer) for
   * nothing.
   */
  takeBytes(): Buffer | undefined {
    const bytes = this.#bytes;
    if (!bytes) return undefined;
    this.#bytes = null;
    return bytes;
  }
}

function ignore(): void {}

/** A body made of bytes already in memory (a buffered result, a test's request). */
export function bodyOf(bytes: Uint8Array | string = ""): WholeBody {
  const chunk = typeof bytes === "string" ? Buffer.from(bytes) : bytes;
  return new WholeBody(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
}

/** All of `body` at once when it is a `WholeBody` nobody has begun to read, else undefined. */
export function takeWhole(body: Body): Buffer | undefined {
  return body instanceof WholeBody ? body.takeBytes() : undefined;
}

/** Bodies up to this size are read whole at each end of the hop instead of streamed. */
export const WHOLE_BODY_BYTES = 64 * 1024;

/**
 * Reads a body into one buffer, the explicit and bounded copy for where one is needed (an
 * asynchronous call's result, an upload, a sandbox that takes its input whole). More than
 * `limit` bytes: the body is destroyed and `tooLarge()` is thrown, having held at most `limit`.
 */
export async function readBody(body: Body, limit: number, tooLarge: () => Error): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) {
      const error = tooLarge();
      // Destroyed with the reason, so whoever tracks the body (the invocation record) knows why;
      // the reason is thrown here, so the stream's own 'error' needs no other listener.
      body.on("error", () => undefined).destroy(error);
      throw error;
    }
    chunks.push(chunk);
  }
  return joinChunks(chunks, size);
}

/**
 * The chunks as one buffer, copied at most JOIN_SLICE_BYTES per turn of the event loop: one copy
 * of an upload of tens of MiB stalled every other call meanwhile.
 */
export function joinChunks(chunks: Buffer[], size: number): Promise<Buffer> | Buffer {
  if (chunks.length === 1) return chunks[0]!;
  if (size <= JOIN_SLICE_BYTES) return Buffer.concat(chunks, size);
  return (async () => {
    const out = Buffer.allocUnsafeSlow(size);
    let at = 0;
    let sinceYield = 0;
    for (const c of chunks) {
      out.set(c, at);
      at += c.length;
      sinceYield += c.length;
      if (sinceYield >= JOIN_SLICE_BYTES) {
        sinceYield = 0;
        await new Promise((r) => setImmediate(r));
      }
    }
    return out;
  })();
}

/** Most bytes of a body copied in one turn of the event loop (a 50 MiB copy took ≈ 0.5 s here). */
const JOIN_SLICE_BYTES = 2 * 2 ** 20;
