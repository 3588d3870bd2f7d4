import type { IncomingMessage } from "node:http";
import { FennecError } from "../core/errors.js";
import { quoteForMessage } from "../core/names.js";

/**
 * The guard of every route that changes state (deploys, uploads, deletes, pre-boots): refuses what
 * a web page on another site could make the user's browser send, token or not (a token in a
 * browser's hands, or no token at all, must not let any page deploy code).
 *
 * Browsers label their requests: `Sec-Fetch-Site` says whether the page that sent it is this
 * origin, and `Origin` names it. Older browsers send neither on some requests, so the body's type
 * is checked too: an HTML form or a no-preflight `fetch` can only send `text/plain`,
 * `application/x-www-form-urlencoded` or `multipart/form-data`, so those are never accepted, and
 * each route names the types it does take (a deploy is `application/json`, which a page can only
 * send after a CORS preflight that Fennec never approves).
 */

/** Content types a browser sends cross-site without a preflight (CORS "simple" requests). */
const FORM_TYPES = new Set(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]);

/** `Sec-Fetch-Site` values of requests that did not come from another origin's page. */
const OWN_SITE = new Set(["same-origin", "none"]);

/** Body types a guarded route accepts; `""` accepts a request without a Content-Type. */
export type AcceptedTypes = readonly string[];

export const JSON_BODY: AcceptedTypes = ["application/json"];
/** The CLI sends module bytes without a type; a browser cannot send a cross-site PUT unpreflighted. */
export const MODULE_BODY: AcceptedTypes = ["application/wasm", "application/octet-stream", ""];
export const NUMBER_BODY: AcceptedTypes = ["application/json", ""];

function mediaType(req: IncomingMessage): string {
  return (req.headers["content-type"] ?? "").split(";")[0]!.trim().toLowerCase();
}

function hasBody(req: IncomingMessage): boolean {
  const length = req.headers["content-length"];
  return req.headers["transfer-encoding"] !== undefined || (length !== undefined && length !== "0");
}

/** The host an Origin header names, or undefined for `null` and anything unparsable. */
function originHost(origin: string): string | undefined {
  try {
    const url = new URL(origin);
    return url.protocol === "http:" || url.protocol === "https:" ? url.host.toLowerCase() : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Throws CROSS_SITE_REFUSED for a request from another site's page and UNSUPPORTED_MEDIA_TYPE for a
 * body that is not one of `accepted` (form types never are). Call it before reading the body.
 */
export function refuseCrossSite(req: IncomingMessage, accepted: AcceptedTypes): void {
  const site = req.headers["sec-fetch-site"];
  if (site !== undefined && !OWN_SITE.has(site.toLowerCase())) {
    throw new FennecError(
      "CROSS_SITE_REFUSED",
      `refused a ${site} request: admin and upload routes take requests from this origin or from tools only`,
    );
  }
  const origin = req.headers.origin;
  if (origin !== undefined) {
    const host = (req.headers.host ?? "").toLowerCase();
    if (originHost(origin) !== host || host === "") {
      throw new FennecError(
        "CROSS_SITE_REFUSED",
        "refused a request whose Origin is not this server: admin and upload routes take requests from this origin or from tools only",
      );
    }
  }
  const method = req.method ?? "GET";
  if (!hasBody(req) && (method === "GET" || method === "HEAD" || method === "DELETE")) return;
  const type = mediaType(req);
  if (FORM_TYPES.has(type) || !accepted.includes(type)) {
    const named = accepted.filter((t) => t !== "");
    throw new FennecError(
      "UNSUPPORTED_MEDIA_TYPE",
      `this route takes a body of type ${named.join(" or ")}${accepted.includes("") ? " (or none)" : ""}, not ${type === "" ? "an untyped body" : quoteForMessage(type)}`,
    );
  }
}
