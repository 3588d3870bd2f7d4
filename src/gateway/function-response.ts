import { validateHeaderName, validateHeaderValue, type ServerResponse } from "node:http";
import { pipeline } from "node:stream/promises";
import { takeWhole, WholeBody } from "../core/body.js";
import { FennecError } from "../core/errors.js";
import { HOP_BY_HOP } from "../core/hop-by-hop.js";
import { quoteForMessage } from "../core/names.js";
import type { InvokeResponse } from "../core/types.js";
import { CALL_ID_HEADER, REQUEST_ID_HEADER } from "./http-util.js";

/**
 * Headers never forwarded either way: one hop's, and `content-length` (the gateway sets a body's
 * length itself, from what it sends).
 */
export const NOT_FORWARDED = new Set([...HOP_BY_HOP, "content-length"]);

/**
 * Headers only the platform sets (the correlation id, `x-fennec-error`, `x-fennec-start`, ...): a
 * function that sends them is ignored, so a client can trust them.
 */
function isPlatformHeader(name: string): boolean {
  return name === REQUEST_ID_HEADER || name === CALL_ID_HEADER || name.startsWith("x-fennec-");
}

/** Statuses after which HTTP allows no body (RFC 9110 §6.4.1). */
function bodyless(status: number, method: string | undefined): boolean {
  return status === 204 || status === 304 || method === "HEAD";
}

/**
 * Sends a function's response, the one place that happens (synchronous and `/fa` results), as
 * HTTP a client can rely on: a final status (a 1xx from a function would put the connection in
 * another protocol's hands or leave a client waiting for the real answer), no body or length
 * where none may be, and none of the platform's own headers. Throws FN_BAD_RESPONSE, before
 * anything is written, for what cannot be sent (the body is then destroyed with that error).
 *
 * The body is piped with back-pressure: a slow client slows the function's stream down instead
 * of making Fennec hold it. Once the head is out a failure can only cut the response: the
 * connection is closed before the body's end (a short `content-length` or no final chunk), which
 * every client reports as an error; the promise then rejects with the body's error.
 */
export async function sendResponse(res: ServerResponse, response: InvokeResponse): Promise<void> {
  let length: string | undefined;
  try {
    length = writeHead(res, response);
  } catch (err) {
    response.body.destroy(err as Error);
    throw err;
  }
  if (bodyless(response.status, res.req.method)) {
    // Nothing may be sent; what the function wrote is read and dropped, so its invocation ends.
    response.body.resume();
    res.end();
    return;
  }
  const whole = takeWhole(response.body);
  if (whole) {
    // All at hand: one write, its length known (the bytes decide, whatever the function declared).
    res.setHeader("content-length", whole.byteLength);
    res.end(whole);
    return;
  }
  if (length !== undefined) {
    res.setHeader("content-length", length);
    // A body that does not match its length cuts the response instead of corrupting the next one.
    res.strictContentLength = true;
  }
  await pipeline(response.body, res);
}

/**
 * The warm path's answer, when the whole body is at hand and nothing is to be dropped: the
 * platform's headers (`head`, a flat name/value list, extended in place) and the function's go
 * out in one `writeHead` with a flat list and the body in one `end`. Node's `setHeader` keeps a
 * map of header objects, validated and copied again when the head is written; a flat list given
 * to `writeHead` of a response that has no headers yet is written as it is (Node still validates
 * it). Returns false, having written nothing and taken nothing, for anything else (a body to
 * stream, a status or header that `sendResponse` refuses, a bodyless answer): the caller then
 * goes the general way, which sets the same headers and answers the same errors.
 */
export function sendWhole(res: ServerResponse, response: InvokeResponse, head: string[]): boolean {
  const { status, body } = response;
  if (!(body instanceof WholeBody) || res.headersSent || hasHeaders(res)) return false;
  if (!Number.isInteger(status) || status < 200 || status > 599 || bodyless(status, res.req.method))
    return false;
  for (const [raw, value] of response.headers) {
    const name = raw.toLowerCase();
    if (NOT_FORWARDED.has(name) || isPlatformHeader(name)) continue;
    try {
      validateHeaderName(name);
      validateHeaderValue(name, value);
    } catch {
      return false;
    }
    head.push(name, value);
  }
  const bytes = body.takeBytes();
  if (!bytes) return false;
  // All at hand: its length is the bytes', whatever the function declared.
  head.push("content-length", String(bytes.byteLength));
  res.writeHead(status, head);
  res.end(bytes);
  return true;
}

/** Whether anything has set a header on `res` yet (writeHead would then merge, not write the list as it is). */
function hasHeaders(res: ServerResponse): boolean {
  return res.getHeaderNames().length > 0;
}

/** Checks and sets the status and headers; returns the function's content-length when valid. */
function writeHead(res: ServerResponse, response: InvokeResponse): string | undefined {
  const { status } = response;
  if (!Number.isInteger(status) || status < 200 || status > 599) {
    throw new FennecError(
      "FN_BAD_RESPONSE",
      `the function answered with status ${status}; a function's status must be a final one (200-599)`,
    );
  }
  const headers: Array<[string, string]> = [];
  let length: string | undefined;
  for (const [raw, value] of response.headers) {
    const name = raw.toLowerCase();
    if (name === "content-length" && /^\d{1,15}$/.test(value)) length = value;
    if (NOT_FORWARDED.has(name) || isPlatformHeader(name)) continue;
    try {
      validateHeaderName(name);
      validateHeaderValue(name, value);
    } catch {
      throw new FennecError(
        "FN_BAD_RESPONSE",
        `the function sent an invalid header ${quoteForMessage(name)}`,
      );
    }
    headers.push([name, value]);
  }
  for (const [name, value] of headers) res.appendHeader(name, value);
  res.statusCode = status;
  return length;
}
