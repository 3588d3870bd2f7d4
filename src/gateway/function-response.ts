import { validateHeaderName, validateHeaderValue, type ServerResponse } from "node:http";
import { pipeline } from "node:stream/promises";
import { takeWhole } from "../core/body.js";
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
