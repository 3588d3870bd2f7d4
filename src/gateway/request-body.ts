import type { IncomingMessage } from "node:http";
import { Readable } from "node:stream";
import { bodyOf, WHOLE_BODY_BYTES, WholeBody } from "../core/body.js";
import { FennecError } from "../core/errors.js";
import type { Body } from "../core/types.js";
import { readBody, tooLarge } from "./http-util.js";

/**
 * The client's request body as handed to a sandbox: read from the socket only as fast as the
 * sandbox takes it, so Fennec never holds more than a few chunks of it. The body limit applies to
 * the bytes received: past it the stream fails with BODY_TOO_LARGE and nothing more is read (the
 * gateway answers 413 and closes the connection). A client that goes away mid-body fails it with
 * CLIENT_GONE, so the sandbox's side is torn down rather than left waiting for the rest.
 */
class RequestBody extends Readable {
  readonly #req: IncomingMessage;
  readonly #limit: number;
  #received = 0;
  #flowing = false;

  constructor(req: IncomingMessage, limit: number) {
    super({ highWaterMark: 64 * 1024 });
    this.#req = req;
    this.#limit = limit;
    req.once("end", () => this.push(null));
    req.once("error", () => this.#fail(gone()));
    req.once("close", () => {
      if (!req.complete) this.#fail(gone());
    });
    // A body failed before the sandbox reads it (the client left while the call was queued) must
    // not take the process down as an unhandled 'error'; its reader sees the error either way.
    this.on("error", () => undefined);
  }

  override _read(): void {
    if (!this.#flowing) {
      this.#flowing = true;
      this.#req.on("data", this.#onData);
    }
    // Also the first time: node:http may have paused the request (a later one on a kept-alive
    // connection is), and a 'data' listener alone does not resume a paused stream.
    this.#req.resume();
  }

  readonly #onData = (chunk: Buffer): void => {
    this.#received += chunk.length;
    if (this.#received > this.#limit) return this.#fail(tooLarge(this.#limit));
    if (!this.push(chunk)) this.#req.pause();
  };

  #fail(error: FennecError): void {
    if (this.destroyed || this.readableEnded) return;
    this.destroy(error);
  }

  override _destroy(err: Error | null, done: (err: Error | null) => void): void {
    // The rest of the client's body stays unread in the socket: the gateway closes the connection
    // once it has answered (closeAfterResponse) instead of reading an unbounded remainder.
    this.#req.off("data", this.#onData);
    this.#req.pause();
    done(err);
  }
}

const gone = () => new FennecError("CLIENT_GONE", "the client went away while sending the request body");

/**
 * The body of `req` as a stream bounded by `limit`, plus the request headers it implies. HTTP/1.1
 * says a request has a body only with a `content-length` or `transfer-encoding`: without either it
 * is empty, and says so with `content-length: 0` (which the hop then sends without a body at all).
 * A small body of declared length is read whole first (a promise of it): most calls are small,
 * and bytes at hand cross the hop without a stream on either side.
 */
export function requestBody(
  req: IncomingMessage,
  limit: number,
): { body: Body | Promise<WholeBody>; length: string | undefined } {
  // The gateway looks the function's limit up before it takes the body: a client that left
  // meanwhile has closed its request already, and no 'close' would come to a listener added now.
  if (req.destroyed && !req.complete) throw gone();
  const declared = req.headers["content-length"];
  if (declared !== undefined && Number(declared) > limit) throw tooLarge(limit);
  if (declared === undefined && req.headers["transfer-encoding"] === undefined) {
    return { body: bodyOf(), length: "0" };
  }
  if (declared === "0") return { body: bodyOf(), length: "0" };
  if (smallBody(req)) {
    return { body: readWhole(req, limit), length: declared };
  }
  return { body: new RequestBody(req, limit), length: declared };
}

/**
 * A small body's bytes, by request, once something other than this node's own invocation has
 * read them (the forwarder sends a small body to another node whole): a call placed back here
 * when that node refused the connection runs on the same bytes.
 */
const readAhead = new WeakMap<IncomingMessage, Promise<Buffer>>();

/**
 * Whether `req` declares a body small enough to be read whole (`WHOLE_BODY_BYTES`): a length,
 * not zero. A chunked body, or a larger one, is streamed.
 */
export function smallBody(req: IncomingMessage): boolean {
  const declared = req.headers["content-length"];
  return declared !== undefined && declared !== "0" && Number(declared) <= WHOLE_BODY_BYTES;
}

/**
 * All of a small body (`smallBody(req)`), read once whoever asks first: the forwarder, then this
 * node's invocation if the call is placed back here. Rejects if the client leaves before its end.
 */
export function readSmallBody(req: IncomingMessage): Promise<Buffer> {
  let bytes = readAhead.get(req);
  if (!bytes) {
    bytes = readBody(req, WHOLE_BODY_BYTES);
    readAhead.set(req, bytes);
  }
  return bytes;
}

/** All of a request's body (node:http ends it at its declared length); CLIENT_GONE if the client leaves first. */
async function readWhole(req: IncomingMessage, limit: number): Promise<WholeBody> {
  try {
    return new WholeBody(await (readAhead.get(req) ?? readBody(req, limit)));
  } catch (err) {
    // node:http fails a request whose connection closes before its end ("aborted").
    throw err instanceof FennecError ? err : gone();
  }
}
