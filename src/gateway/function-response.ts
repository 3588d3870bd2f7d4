import { validateHeaderName, validateHeaderValue, type ServerResponse } from "node:http";
import { FennecError } from "../core/errors.js";
import { quoteForMessage } from "../core/names.js";
import type { InvokeResponse } from "../core/types.js";
import { REQUEST_ID_HEADER } from "./http-util.js";

/** Headers that describe one hop, not the message: never forwarded either way. */
export const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "transfer-encoding",
  "upgrade",
  "te",
  "trailer",
  "proxy-connection",
  "content-length",
]);

/**
 * Headers only the platform sets (the correlation id, `x-fennec-error`, `x-fennec-start`, ...): a
 * function that sends them is ignored, so a client can trust them.
 */
function isPlatformHeader(name: string): boolean {
  return name === REQUEST_ID_HEADER || name.startsWith("x-fennec-");
}

/** Statuses after which HTTP allows no body (RFC 9110 §6.4.1). */
function bodyless(status: number, method: string | undefined): boolean {
  return status === 204 || status === 304 || method === "HEAD";
}

/**
 * Writes a function's response, the one place that happens (synchronous and `/fa` results), as
 * HTTP a client can rely on: a final status (a 1xx from a function would put the connection in
 * another protocol's hands or leave a client waiting for the real answer), no body or length
 * where none may be, and none of the platform's own headers. Throws FN_BAD_RESPONSE, before
 * anything is written, for what cannot be sent.
 */
export function writeResponse(res: ServerResponse, response: InvokeResponse): void {
  const { status } = response;
  if (!Number.isInteger(status) || status < 200 || status > 599) {
    throw new FennecError(
      "FN_BAD_RESPONSE",
      `the function answered with status ${status}; a function's status must be a final one (200-599)`,
    );
  }
  const headers: Array<[string, string]> = [];
  for (const [raw, value] of response.headers) {
    const name = raw.toLowerCase();
    if (HOP_BY_HOP.has(name) || isPlatformHeader(name)) continue;
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
  if (bodyless(status, res.req.method)) {
    res.end();
    return;
  }
  res.setHeader("content-length", response.body.byteLength);
  res.end(response.body);
}
