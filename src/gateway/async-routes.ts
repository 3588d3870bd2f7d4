import { timeOrderedUuid } from "../core/call-id.js";
import type { IncomingMessage, ServerResponse } from "node:http";
import { bodyOf } from "../core/body.js";
import { ErrorCodes, FennecError, type ErrorCode } from "../core/errors.js";
import { quoteForMessage } from "../core/names.js";
import { functionKey, type FunctionId } from "../core/types.js";
import type { FunctionConfig } from "../config/function-config.js";
import type { AsyncEngine } from "../invocations/async-engine.js";
import type { Callbacks } from "../invocations/callbacks.js";
import type { CallRecord, InvocationStore } from "../store/contract.js";
import { NOT_FORWARDED, sendResponse } from "./function-response.js";
import { readBody, sendJson } from "./http-util.js";

export interface AsyncRoutesOptions {
  readonly store: InvocationStore;
  readonly engine: AsyncEngine;
  readonly callbacks: Callbacks;
  /** The function's config, as the next call would run under (FUNCTION_NOT_FOUND when there is none). */
  readonly configOf: (id: FunctionId) => FunctionConfig | Promise<FunctionConfig>;
  /** The gateway's body limit: an async body is a copy kept on disk, within the smaller of this and the function's. */
  readonly bodyLimitBytes: number;
  /** Refuses what an admin route refuses (cross-site requests, a missing token). */
  readonly guardAdmin: (req: IncomingMessage) => void;
}

/** Headers a stored request never keeps: the platform's own, and the caller's credentials unless the function takes them. */
const CREDENTIALS = new Set(["authorization", "proxy-authorization", "cookie"]);
const KNOWN_CODES = new Set<string>(ErrorCodes);
const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,256}$/;

/**
 * The asynchronous call routes: submission (Faasm's `POST /fa/<user>/<fn>`, OpenFaaS's
 * `POST /async-function/<fn>`), the result (`GET /fa/calls/<id>`), and the dead-letter admin
 * routes (`POST /system/calls/<id>/replay`, `DELETE /system/calls/<id>`). A call is on disk
 * before its `202` goes out; a store that cannot take it answers its error (507 STORE_FULL), never
 * a `202`.
 */
export class AsyncRoutes {
  readonly #o: AsyncRoutesOptions;

  constructor(options: AsyncRoutesOptions) {
    this.#o = options;
  }

  async submit(
    req: IncomingMessage,
    res: ServerResponse,
    id: FunctionId,
    path: string,
    query: string,
  ): Promise<void> {
    const callbackUrl = header(req, "x-callback-url");
    if (callbackUrl !== undefined) this.#o.callbacks.check(callbackUrl);
    const idempotencyKey = header(req, "idempotency-key");
    if (idempotencyKey !== undefined && !IDEMPOTENCY_KEY.test(idempotencyKey))
      throw new FennecError("BAD_REQUEST", "Idempotency-Key must be 1-256 visible ASCII characters");
    const config = await this.#o.configOf(id);
    // The caller is answered before the call runs, so its body is read here, whole: the copy the
    // store keeps. A function's own limit applies when smaller; a larger one does not lift the
    // gateway's, which bounds what one call holds in memory and on disk.
    const limit = Math.min(config.maxRequestBodyBytes ?? this.#o.bodyLimitBytes, this.#o.bodyLimitBytes);
    const body = await readBody(req, limit);
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(req.headers)) {
      if (value === undefined || NOT_FORWARDED.has(name) || name.startsWith("x-fennec-")) continue;
      // Written to disk only for a function that is given them anyway.
      if (CREDENTIALS.has(name) && !config.forwardCredentials) continue;
      headers[name] = Array.isArray(value) ? value.join(", ") : value;
    }
    headers["content-length"] = String(body.byteLength);
    const now = Date.now();
    const { id: callId } = await this.#o.store.enqueue({
      id: timeOrderedUuid(now),
      function: functionKey(id),
      request: { method: req.method ?? "POST", path, query, headers, body },
      submittedAt: now,
      idempotencyKey,
      callbackUrl,
    });
    this.#o.engine.wake();
    const status = `/fa/calls/${callId}`;
    res.setHeader("x-call-id", callId);
    res.setHeader("location", status);
    sendJson(res, 202, { callId, status });
  }

  /** `GET /fa/calls/<id>`: 202 while pending, then the function's answer, or the error that ended the call. */
  async result(res: ServerResponse, callId: string): Promise<void> {
    const record = await this.#find(callId);
    res.setHeader("x-call-id", record.id);
    res.setHeader("x-fennec-call-state", record.state);
    res.setHeader("x-fennec-call-attempt", String(record.attempt));
    if (record.state === "queued" || record.state === "running") {
      return sendJson(res, 202, {
        callId: record.id,
        function: record.function,
        state: record.state,
        attempt: record.attempt,
        submittedAt: record.submittedAt,
        ...(record.notBefore !== undefined && record.state === "queued"
          ? { notBefore: record.notBefore }
          : {}),
        ...(record.errorCode !== undefined
          ? { lastError: { code: record.errorCode, message: record.errorMessage } }
          : {}),
      });
    }
    if (record.state === "succeeded") {
      const response = await this.#o.store.response(record.id);
      if (!response)
        throw new FennecError(
          "CALL_NOT_FOUND",
          `call ${record.id} succeeded but kept no result (a synchronous call's is not kept)`,
        );
      return sendResponse(res, {
        status: response.status,
        headers: response.headers,
        body: bodyOf(response.body),
      });
    }
    throw errorOf(record);
  }

  /** `POST /system/calls/<id>/replay`: a dead call runs again from attempt 1. */
  async replay(req: IncomingMessage, res: ServerResponse, callId: string): Promise<void> {
    this.#o.guardAdmin(req);
    req.resume();
    if (!(await this.#o.store.replay(callId, Date.now()))) {
      const record = await this.#find(callId);
      throw new FennecError(
        "CALL_STATE",
        `call ${record.id} is ${record.state}: only a dead call can be replayed`,
      );
    }
    this.#o.engine.wake();
    res.setHeader("x-call-id", callId);
    sendJson(res, 200, { callId, state: "queued", status: `/fa/calls/${callId}` });
  }

  /** `DELETE /system/calls/<id>`: removes a call and its result, in any state but running. */
  async remove(req: IncomingMessage, res: ServerResponse, callId: string): Promise<void> {
    this.#o.guardAdmin(req);
    req.resume();
    if (!(await this.#o.store.delete(callId))) {
      const record = await this.#find(callId);
      throw new FennecError(
        "CALL_STATE",
        `call ${record.id} is ${record.state}: a running call cannot be deleted`,
      );
    }
    sendJson(res, 200, { callId, deleted: true });
  }

  async #find(callId: string): Promise<CallRecord> {
    const record = callId === "" ? undefined : await this.#o.store.get(callId);
    if (!record)
      throw new FennecError(
        "CALL_NOT_FOUND",
        `no call ${quoteForMessage(callId)} (it never existed, was deleted, or retention removed it)`,
      );
    return record;
  }
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** The error a failed or dead call ended with, in Fennec's format with its stable code. */
function errorOf(record: CallRecord): FennecError {
  const code: ErrorCode =
    record.errorCode !== undefined && KNOWN_CODES.has(record.errorCode)
      ? (record.errorCode as ErrorCode)
      : "INTERNAL";
  const message =
    record.errorMessage ?? `call ${record.id} ${record.state === "dead" ? "was dead-lettered" : "failed"}`;
  return new FennecError(code, message, {
    details: { callId: record.id, state: record.state, attempt: record.attempt },
  });
}
