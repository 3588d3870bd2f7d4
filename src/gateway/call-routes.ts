/**
 * Reading invocation records and function logs: `GET /system/calls`, `GET /system/calls/<id>` and
 * `GET /system/logs` (OpenFaaS's log provider API: newline-delimited JSON, `follow` streams). The
 * gateway checks the admin token and cross-site requests before it hands a request here.
 */
import type { ServerResponse } from "node:http";
import { parseDuration } from "../config/duration.js";
import { FennecError } from "../core/errors.js";
import { quoteForMessage } from "../core/names.js";
import { functionKey } from "../core/types.js";
import {
  TERMINAL_STATES,
  type CallQuery,
  type CallState,
  type InvocationStore,
  type LogQuery,
  type StoredLogLine,
} from "../store/contract.js";
import { sendJson } from "./http-util.js";
import { functionId } from "./routes.js";

const STATES: ReadonlySet<string> = new Set<CallState>(["queued", "running", ...TERMINAL_STATES]);
/** A follower that lets this much pile up unread is cut off rather than held in memory. */
const FOLLOW_BACKLOG_BYTES = 1024 * 1024;

/** Serves `/system/calls[/<id>]` and `/system/logs`; `segments` are the path's, `query` its raw query. */
export async function serveCallRoutes(
  res: ServerResponse,
  segments: readonly string[],
  query: string,
  store: InvocationStore,
): Promise<void> {
  const params = new URLSearchParams(query);
  const [, what, id, extra] = segments;
  if (what === "logs" && id === undefined) return serveLogs(res, params, store);
  if (what === "calls" && extra === undefined) {
    if (id === undefined || id === "") return sendJson(res, 200, await store.list(callQuery(params)));
    const record = await store.get(id);
    if (!record)
      throw new FennecError(
        "CALL_NOT_FOUND",
        `no call ${quoteForMessage(id)} (it never existed, or retention removed it)`,
      );
    return sendJson(res, 200, record);
  }
  throw new FennecError("NOT_FOUND", `no route for GET ${quoteForMessage("/" + segments.join("/"))}`);
}

/**
 * A time to look back to: an ISO 8601 time, milliseconds since the epoch, or a duration before
 * `now` (`90s`, `10m`, `2h`, `1d`).
 */
export function parseSince(text: string, now = Date.now()): number {
  const trimmed = text.trim();
  if (/^\d{10,}$/.test(trimmed)) return Number(trimmed);
  const ago = parseDuration(trimmed);
  if (ago !== undefined) return now - ago;
  const time = Date.parse(trimmed);
  if (/^\d{4}-\d{2}-\d{2}/.test(trimmed) && Number.isFinite(time)) return time;
  throw new FennecError(
    "BAD_REQUEST",
    `since=${quoteForMessage(text)} is neither an ISO time, milliseconds since the epoch nor a duration like 10m`,
  );
}

/** `name` or `user/name`, as the store keys functions. */
function functionParam(value: string): string {
  const parts = value.split("/");
  if (parts.length > 2)
    throw new FennecError("BAD_NAME", `function=${quoteForMessage(value)} is not a function name`);
  return functionKey(parts.length === 2 ? functionId(parts[0], parts[1]) : functionId(undefined, value));
}

function limitParam(value: string, max: number): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > max)
    throw new FennecError(
      "BAD_REQUEST",
      `limit=${quoteForMessage(value)} must be a whole number from 1 to ${max}`,
    );
  return n;
}

function callQuery(params: URLSearchParams): CallQuery {
  const q: { -readonly [K in keyof CallQuery]: CallQuery[K] } = {};
  const fn = params.get("function");
  if (fn) q.function = functionParam(fn);
  const state = params.get("state");
  if (state) {
    if (!STATES.has(state))
      throw new FennecError(
        "BAD_REQUEST",
        `state=${quoteForMessage(state)} is not one of ${[...STATES].join(", ")}`,
      );
    q.state = state as CallState;
  }
  const kind = params.get("kind");
  if (kind) {
    if (kind !== "sync" && kind !== "async")
      throw new FennecError("BAD_REQUEST", `kind=${quoteForMessage(kind)} is not sync or async`);
    q.kind = kind;
  }
  // A number is the function's status (500); anything else an error code (FN_TIMEOUT).
  const status = params.get("status");
  if (status) q.status = /^\d{3}$/.test(status) ? Number(status) : status;
  const since = params.get("since");
  if (since) q.since = parseSince(since);
  const parent = params.get("parent");
  if (parent) q.parentId = parent;
  const limit = params.get("limit");
  if (limit) q.limit = limitParam(limit, 1000);
  return q;
}

/** A stored line in OpenFaaS's `logs.Message` shape, with the call and stream added. */
function message(line: StoredLogLine): string {
  const slash = line.function.indexOf("/");
  return (
    JSON.stringify({
      name: line.function.slice(slash + 1),
      namespace: line.function.slice(0, slash),
      instance: line.instanceId ?? "",
      timestamp: new Date(line.time).toISOString(),
      text: line.text,
      callId: line.callId,
      stream: line.stream,
    }) + "\n"
  );
}

async function serveLogs(
  res: ServerResponse,
  params: URLSearchParams,
  store: InvocationStore,
): Promise<void> {
  const q: { -readonly [K in keyof LogQuery]: LogQuery[K] } = {};
  // `name` is OpenFaaS's parameter, `function` Fennec's (as on /system/calls).
  const fn = params.get("function") ?? params.get("name");
  if (fn) q.function = functionParam(fn);
  const call = params.get("call");
  if (call) q.callId = call;
  const since = params.get("since");
  if (since) q.since = parseSince(since);
  const limit = params.get("limit") ?? params.get("tail");
  if (limit) q.limit = limitParam(limit, 10_000);
  const follow = params.get("follow") === "true" || params.get("follow") === "1";
  if (!follow) {
    const lines = await store.logs(q);
    const body = lines.map(message).join("");
    res.writeHead(200, {
      "content-type": "application/x-ndjson; charset=utf-8",
      "content-length": Buffer.byteLength(body),
    });
    res.end(body);
    return;
  }
  // Lines appended while the history is read are held, then sent after it without repeats.
  const held: StoredLogLine[] = [];
  let lastSeq = -1;
  let live = false;
  const send = (line: StoredLogLine): void => {
    if (line.seq <= lastSeq || res.destroyed) return;
    lastSeq = line.seq;
    res.write(message(line));
    if (res.writableLength > FOLLOW_BACKLOG_BYTES) res.destroy();
  };
  const stop = store.followLogs({ function: q.function, callId: q.callId }, (line) => {
    if (live) send(line);
    else held.push(line);
  });
  // The subscription lives exactly as long as the client's connection ('close' comes when it goes).
  res.once("close", stop);
  try {
    const history = await store.logs(q);
    res.writeHead(200, {
      "content-type": "application/x-ndjson; charset=utf-8",
      "cache-control": "no-store",
    });
    // Sent at once: a follower sees the stream open before any line is written.
    res.flushHeaders();
    for (const line of history) send(line);
    live = true;
    for (const line of held.splice(0)) send(line);
  } catch (err) {
    stop();
    throw err;
  }
}
