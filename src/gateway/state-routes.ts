/**
 * Per-user state over HTTP, as Faasm's REST API has it: `GET|PUT|DELETE /s/<user>/<key>` reads,
 * replaces or removes one value (bytes), `GET /s/<user>` lists the user's keys. Admin routes: the
 * gateway checks the admin token and cross-site requests before it hands a request here. The
 * same limits as functions' own state calls (call-host.ts) apply.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { readBody } from "../core/body.js";
import { FennecError } from "../core/errors.js";
import { assertValidName, quoteForMessage } from "../core/names.js";
import { checkStateKey, DEFAULT_CALL_HOST_LIMITS } from "../invocations/call-host.js";
import type { InvocationStore } from "../store/contract.js";
import type { AcceptedTypes } from "./cross-site.js";
import { sendJson } from "./http-util.js";

/** A state value is bytes: sent as such, or untyped (never a form a page could post). */
export const STATE_BODY: AcceptedTypes = ["application/octet-stream", ""];

export interface StateLimits {
  readonly maxValueBytes: number;
  readonly maxKeyBytes: number;
}

const DEFAULT_LIMITS: StateLimits = {
  maxValueBytes: DEFAULT_CALL_HOST_LIMITS.maxStateValueBytes,
  maxKeyBytes: DEFAULT_CALL_HOST_LIMITS.maxStateKeyBytes,
};

/** Serves `/s/...`; `segments` are the decoded path's (`["s", user, key]`). */
export async function serveStateRoutes(
  req: IncomingMessage,
  res: ServerResponse,
  segments: readonly string[],
  store: InvocationStore,
  limits: StateLimits = DEFAULT_LIMITS,
): Promise<void> {
  const [, rawUser, key, extra] = segments;
  const method = req.method ?? "GET";
  if (rawUser === undefined || rawUser === "" || extra !== undefined)
    throw new FennecError(
      "NOT_FOUND",
      `no route for ${method} ${quoteForMessage("/" + segments.join("/"))}: use /s/<user>/<key>`,
    );
  const user = assertValidName(rawUser, "user");
  if (key === undefined || key === "") {
    if (method !== "GET")
      throw new FennecError("METHOD_NOT_ALLOWED", `${method} is not allowed on /s/<user>; use GET`);
    return sendJson(res, 200, { user, keys: await store.stateKeys(user) });
  }
  checkStateKey(key, limits.maxKeyBytes);
  switch (method) {
    case "GET":
    case "HEAD": {
      const value = await store.stateGet(user, key);
      if (!value) throw new FennecError("NOT_FOUND", `user ${user} has no state ${quoteForMessage(key)}`);
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": value.byteLength });
      res.end(method === "HEAD" ? undefined : value);
      return;
    }
    case "PUT": {
      const declared = Number(req.headers["content-length"]);
      const tooLarge = () =>
        new FennecError("STATE_TOO_LARGE", `a state value may be at most ${limits.maxValueBytes} bytes`);
      // Refused before a byte is read when the client says how much it sends.
      if (Number.isFinite(declared) && declared > limits.maxValueBytes) throw tooLarge();
      const value = await readBody(req, limits.maxValueBytes, tooLarge);
      await store.stateSet(user, key, value);
      return sendJson(res, 200, { user, key, bytes: value.byteLength });
    }
    case "DELETE":
      if (!(await store.stateDelete(user, key)))
        throw new FennecError("NOT_FOUND", `user ${user} has no state ${quoteForMessage(key)}`);
      res.writeHead(204).end();
      return;
  }
  throw new FennecError(
    "METHOD_NOT_ALLOWED",
    `${method} is not allowed on /s/<user>/<key>; use GET, PUT or DELETE`,
  );
}
