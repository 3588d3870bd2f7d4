import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { Pool, errors as undiciErrors } from "undici";
import { takeWhole, WHOLE_BODY_BYTES, WholeBody } from "../core/body.js";
import { FennecError } from "../core/errors.js";
import { HOP_BY_HOP } from "../core/hop-by-hop.js";
import type { InvokeRequest, InvokeResponse } from "../core/types.js";

/**
 * Where an out-of-process instance serves HTTP: a Unix socket, a loopback port, or streams opened
 * by some other means (a VM guest's channel, `guest-channel.ts`).
 */
export type Endpoint =
  | { readonly socketPath: string }
  | { readonly host: string; readonly port: number }
  | { readonly connect: () => Duplex };

/** Request headers of this hop: one hop's, `expect` (the gateway has answered any `100-continue` itself) and `host`. */
const NOT_SENT = new Set([...HOP_BY_HOP, "expect", "host"]);

/** Response headers that describe this hop's message, not the function's: the gateway sets its own. */
const NOT_FORWARDED = new Set([...NOT_SENT, "date"]);

/**
 * Forwards invocations to an instance's HTTP server (the UniFaaS guest contract) with undici,
 * over one keep-alive connection pool per instance, both bodies streamed. A connection that
 * breaks mid-request is the function's fault (FN_CRASHED).
 */
export class HttpTransport {
  readonly #pool: Pool;
  readonly #what: string;

  constructor(endpoint: Endpoint, what: string) {
    this.#what = what;
    const options: Pool.Options = {
      connections: 64,
      // The function's timeout covers the whole invocation (instance.ts); undici's own 300 s
      // limits would cut a slow event stream that the function is allowed to keep open.
      headersTimeout: 0,
      bodyTimeout: 0,
    };
    if ("connect" in endpoint) {
      // Each connection is a fresh stream of the guest's channel, ready as soon as it is opened.
      const open = endpoint.connect;
      this.#pool = new Pool("http://guest", {
        ...options,
        connect: (_opts, callback) => {
          // Handed over on the next tick, as a real connect would: undici does not expect its
          // callback to run before the connector returns (a synchronous one stalls the pool).
          let stream: Duplex;
          try {
            stream = open();
          } catch (err) {
            process.nextTick(() => callback(err as Error, null));
            return;
          }
          process.nextTick(() => callback(null, stream as Socket));
        },
      });
    } else if ("socketPath" in endpoint)
      this.#pool = new Pool("http://localhost", { ...options, socketPath: endpoint.socketPath });
    else this.#pool = new Pool(`http://${endpoint.host}:${endpoint.port}`, options);
  }

  /**
   * A kept-alive connection the instance closed while idle can meet a request already on its way:
   * that request is lost before the function saw it. undici closes idle connections before the
   * server's announced `Keep-Alive: timeout` (Node's servers say 5 s), which avoids most of these;
   * a request still lost so is sent once more on a new connection — but only when its body is at
   * hand (none, or a whole one): a streamed body is gone once sent, so such a request cannot be resent.
   *
   * Small bodies cross whole: a request body already read goes to undici as bytes, and a response
   * of declared length up to WHOLE_BODY_BYTES is read whole before it is handed on, so the
   * gateway answers with one write. Larger or open-ended ones stream both ways.
   */
  async invoke(req: InvokeRequest, signal: AbortSignal): Promise<InvokeResponse> {
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) if (!NOT_SENT.has(k)) headers[k] = v;
    const whole = takeWhole(req.body);
    const bodyless = headers["content-length"] === "0";
    if (bodyless && !whole) req.body.resume(); // empty: nothing to send, but it must end
    const resendable = bodyless || whole !== undefined;
    const path = req.path + (req.query ? `?${req.query}` : "");
    const send = () =>
      this.#pool.request({
        method: req.method,
        path,
        headers,
        body: bodyless ? null : (whole ?? req.body),
        signal,
      });
    let res: Awaited<ReturnType<Pool["request"]>>;
    try {
      res = await send().catch((err: unknown) => {
        if (!resendable || !stale(err) || signal.aborted) throw err;
        return send();
      });
    } catch (err) {
      if (signal.aborted) throw signal.reason;
      // The request body's own failure (over the body limit, the client went away) is not the function's.
      if (err instanceof FennecError) throw err;
      throw this.#broken(err as Error);
    }
    const out: Array<[string, string]> = [];
    for (const [name, value] of Object.entries(res.headers)) {
      if (value === undefined || NOT_FORWARDED.has(name)) continue;
      if (Array.isArray(value)) for (const v of value) out.push([name, v]);
      else out.push([name, value]);
    }
    if (Number(res.headers["content-length"]) <= WHOLE_BODY_BYTES) {
      let bytes: Buffer;
      try {
        bytes = Buffer.from(await res.body.arrayBuffer());
      } catch (err) {
        if (signal.aborted) throw signal.reason;
        throw this.#broken(err as Error);
      }
      return { status: res.statusCode, headers: out, body: new WholeBody(bytes) };
    }
    return { status: res.statusCode, headers: out, body: res.body };
  }

  #broken(err: Error): FennecError {
    return new FennecError(
      "FN_CRASHED",
      `${this.#what}: the connection to the instance broke: ${err.message}`,
      { cause: err },
    );
  }

  close(): void {
    void this.#pool.destroy().catch(() => undefined);
  }
}

/** A connection that died before any answer after serving earlier requests: a stale keep-alive. */
function stale(err: unknown): boolean {
  if (!(err instanceof undiciErrors.SocketError)) return false;
  return (err.socket?.bytesRead ?? 0) > 0;
}
