import { randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { joinChunks } from "../core/body.js";
import { FennecError } from "../core/errors.js";
import { STATUS_BY_CODE } from "./error-status.js";

export const REQUEST_ID_HEADER = "x-request-id";
/** The header that names a call (OpenFaaS's `X-Call-Id`): its record's id. */
export const CALL_ID_HEADER = "x-call-id";
const SAFE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** Keeps a caller's correlation id when it is safe to echo, else makes one. */
export function requestIdOf(req: IncomingMessage): string {
  const given = req.headers[REQUEST_ID_HEADER];
  return typeof given === "string" && SAFE_ID.test(given) ? given : randomUUID();
}

/**
 * Reads the whole body, refusing more than `limit` bytes with BODY_TOO_LARGE. Unlike core's
 * readBody it leaves the request paused, not destroyed, over the limit: destroying it would
 * reset the connection before the 413 is out.
 */
export function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers["content-length"]);
  if (Number.isFinite(declared) && declared > limit) {
    return Promise.reject(tooLarge(limit));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        // The rest is not read: the error closes the connection (closeAfterResponse).
        req.off("data", onData);
        req.pause();
        reject(tooLarge(limit));
        return;
      }
      chunks.push(chunk);
    };
    req.on("data", onData);
    req.once("end", () => resolve(joinChunks(chunks, size)));
    req.once("error", reject);
  });
}

/**
 * Answers and then closes the connection without reading the rest of the request's body: after
 * an early refusal (401, 404, 413, ...) reading on would let any client make Fennec swallow an
 * unbounded body, and not reading it would leave it to be parsed as the next request.
 */
export function closeAfterResponse(req: IncomingMessage, res: ServerResponse): void {
  req.pause();
  res.setHeader("connection", "close");
  res.once("finish", () => req.socket.destroy());
}

export function tooLarge(limit: number): FennecError {
  return new FennecError("BODY_TOO_LARGE", `request body exceeds the limit of ${limit} bytes`);
}

export function sendJson(res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value, null, 2) + "\n";
  res.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "content-length": Buffer.byteLength(body),
  });
  res.end(body);
}

export function sendError(res: ServerResponse, error: FennecError, requestId: string): void {
  if (res.headersSent) {
    res.destroy(error);
    return;
  }
  const status = STATUS_BY_CODE[error.code];
  res.setHeader("x-fennec-error", error.code);
  sendJson(res, status, {
    error: {
      code: error.code,
      message: error.message,
      requestId,
      ...(error.details ? { details: error.details } : {}),
    },
  });
}
