/**
 * Function logs: what a sandbox writes, split into lines, attributed to calls, bounded per call
 * and published on the `fennec:log` channel (src/core/events.ts). Drivers never see the store; a
 * subscriber in the composition root keeps the lines. Nothing here runs unless someone subscribes.
 */
import { StringDecoder } from "node:string_decoder";
import { logsWanted, publishLog } from "../core/events.js";

/** Most bytes of log one call keeps; past it one marker line says the rest was dropped. */
export const CALL_LOG_BYTES = 64 * 1024;
export const TRUNCATED_MARKER = `… truncated: this call's log passed ${CALL_LOG_BYTES / 1024} KiB`;
/**
 * Output that arrives this soon after an instance's only call ended still belongs to it: the
 * sandbox's pipes and the response's socket are not ordered, so a line written before the answer
 * can be read after it.
 */
const LINGER_MS = 100;

type Stream = "stdout" | "stderr";

/**
 * Publishes `text` (whole lines; a last line without a newline counts) as lines of `callId`,
 * bounded to CALL_LOG_BYTES: for a sandbox that captures each call's output apart (wasm).
 */
export function publishCallOutput(
  fn: string,
  instanceId: string | undefined,
  callId: string | undefined,
  stream: Stream,
  text: string,
  truncated = false,
): void {
  if (text === "" || !logsWanted()) return;
  const time = Date.now();
  let used = 0;
  const lines = text.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  for (const line of lines) {
    used += Buffer.byteLength(line) + 1;
    if (used > CALL_LOG_BYTES) {
      truncated = true;
      break;
    }
    publishLog({ time, function: fn, callId, instanceId, stream, text: line });
  }
  if (truncated) publishLog({ time, function: fn, callId, instanceId, stream, text: TRUNCATED_MARKER });
}

/**
 * One instance's output as log lines. An instance may run several calls at once and its output is
 * one stream, so a line is attributed to a call only when that call is the instance's one call in
 * flight (or ended less than LINGER_MS ago and none began since); otherwise its call id is
 * undefined. The instance lifecycle tells it when calls begin and end; the driver hands it what
 * the sandbox writes.
 */
export class InstanceLog {
  readonly #fn: string;
  readonly #instanceId: string;
  /** Calls in flight, in the order they began; undefined for a call without an id. */
  readonly #calls: Array<string | undefined> = [];
  /** Bytes of log kept per call in flight (Infinity once its marker is out). */
  readonly #used = new Map<string, number>();
  /** The call that ended last while alone, and when: later output may still be its. */
  #last: { readonly callId: string; readonly endedAt: number } | undefined;
  readonly #partial: Record<Stream, string> = { stdout: "", stderr: "" };
  readonly #decoders: Record<Stream, StringDecoder | undefined> = { stdout: undefined, stderr: undefined };

  constructor(fn: string, instanceId: string) {
    this.#fn = fn;
    this.#instanceId = instanceId;
  }

  /** A call starts on this instance. */
  begin(callId: string | undefined): void {
    // What is left of a line belongs to whoever wrote before this call began.
    if (this.#partial.stdout !== "" || this.#partial.stderr !== "") this.flush();
    if (this.#last) this.#used.delete(this.#last.callId);
    this.#last = undefined;
    this.#calls.push(callId);
  }

  /** A call on this instance is over. */
  end(callId: string | undefined): void {
    const at = this.#calls.indexOf(callId);
    if (at >= 0) this.#calls.splice(at, 1);
    if (callId === undefined) return;
    if (this.#calls.length === 0) this.#last = { callId, endedAt: performance.now() };
    else this.#used.delete(callId);
  }

  /** Output the sandbox wrote on `stream`. */
  write(stream: Stream, chunk: Buffer | string): void {
    if (!logsWanted()) return;
    let text: string;
    if (typeof chunk === "string") text = chunk;
    else text = (this.#decoders[stream] ??= new StringDecoder("utf8")).write(chunk);
    text = this.#partial[stream] + text;
    let start = 0;
    for (let nl = text.indexOf("\n"); nl >= 0; nl = text.indexOf("\n", start)) {
      this.#line(stream, text.slice(start, nl));
      start = nl + 1;
    }
    let rest = text.slice(start);
    // A line that never ends is cut into pieces of the per-call bound rather than held whole.
    while (rest.length > CALL_LOG_BYTES) {
      this.#line(stream, rest.slice(0, CALL_LOG_BYTES));
      rest = rest.slice(CALL_LOG_BYTES);
    }
    this.#partial[stream] = rest;
  }

  /** Publishes what is left of unfinished lines (the instance stopped, or a call began). */
  flush(): void {
    for (const stream of ["stdout", "stderr"] as const) {
      const rest = this.#partial[stream] + (this.#decoders[stream]?.end() ?? "");
      this.#partial[stream] = "";
      this.#decoders[stream] = undefined;
      if (rest !== "") this.#line(stream, rest);
    }
  }

  /** The call a line written now belongs to, if one can be told. */
  #owner(): string | undefined {
    if (this.#calls.length === 1) return this.#calls[0];
    if (this.#calls.length === 0 && this.#last) {
      if (performance.now() - this.#last.endedAt <= LINGER_MS) return this.#last.callId;
      this.#used.delete(this.#last.callId);
      this.#last = undefined;
    }
    return undefined;
  }

  #line(stream: Stream, text: string): void {
    const callId = this.#owner();
    const time = Date.now();
    if (callId !== undefined) {
      const used = (this.#used.get(callId) ?? 0) + Buffer.byteLength(text) + 1;
      if (used > CALL_LOG_BYTES) {
        if (this.#used.get(callId) !== Number.POSITIVE_INFINITY) {
          this.#used.set(callId, Number.POSITIVE_INFINITY);
          publishLog({ time, function: this.#fn, callId, instanceId: this.#instanceId, stream, text: TRUNCATED_MARKER });
        }
        return;
      }
      this.#used.set(callId, used);
    }
    publishLog({ time, function: this.#fn, callId, instanceId: this.#instanceId, stream, text });
  }
}
