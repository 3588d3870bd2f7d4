import { Agent, request } from "node:http";
import type { Duplex } from "node:stream";
import { FennecError } from "../core/errors.js";
import type { InvokeRequest, InvokeResponse } from "../core/types.js";

/**
 * Where an out-of-process instance serves HTTP: a Unix socket, a loopback port, or streams opened
 * by some other means (a VM guest's channel, `guest-channel.ts`).
 */
export type Endpoint =
  | { readonly socketPath: string }
  | { readonly host: string; readonly port: number }
  | { readonly connect: () => Duplex };

const HOP_BY_HOP = new Set(["connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer"]);

/**
 * Forwards invocations to an instance's HTTP server (the UniFaaS guest contract) over one
 * keep-alive agent per instance. A connection that breaks mid-request is the function's fault.
 */
export class HttpTransport {
  readonly #agent = new Agent({ keepAlive: true, maxSockets: 64 });
  readonly #endpoint: { readonly socketPath: string } | { readonly host: string; readonly port: number };
  readonly #what: string;

  constructor(endpoint: Endpoint, what: string) {
    if ("connect" in endpoint) {
      // The agent asks for a new connection only when it has no idle one to reuse.
      const connect = endpoint.connect;
      (this.#agent as unknown as { createConnection: () => Duplex }).createConnection = connect;
      this.#endpoint = { host: "guest", port: 80 };
    } else this.#endpoint = endpoint;
    this.#what = what;
  }

  /**
   * A kept-alive connection the instance closed while idle (Node's servers do after 5 s) can meet
   * a request already on its way: that request is lost before the function saw it, so it is sent
   * once more on a new connection, as Node's documentation advises for `reusedSocket`.
   */
  async invoke(req: InvokeRequest, signal: AbortSignal): Promise<InvokeResponse> {
    try {
      return await this.#send(req, signal);
    } catch (err) {
      if (!(err instanceof StaleConnection)) throw err;
      return this.#send(req, signal).catch((e: unknown) => {
        throw e instanceof StaleConnection ? e.error : e;
      });
    }
  }

  #send(req: InvokeRequest, signal: AbortSignal): Promise<InvokeResponse> {
    return new Promise((resolve, reject) => {
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(req.headers))
        if (!HOP_BY_HOP.has(k) && k !== "host") headers[k] = v;
      headers["content-length"] = String(req.body.byteLength);
      const r = request(
        {
          ...this.#endpoint,
          agent: this.#agent,
          method: req.method,
          path: req.path + (req.query ? `?${req.query}` : ""),
          headers,
          signal,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("error", (err) => reject(this.#broken(err)));
          res.on("end", () => {
            const out: Array<[string, string]> = [];
            for (let i = 0; i + 1 < res.rawHeaders.length; i += 2) {
              const name = res.rawHeaders[i]!.toLowerCase();
              if (!HOP_BY_HOP.has(name) && name !== "content-length" && name !== "date")
                out.push([name, res.rawHeaders[i + 1]!]);
            }
            resolve({ status: res.statusCode ?? 502, headers: out, body: Buffer.concat(chunks) });
          });
        },
      );
      let answered = false;
      r.on("response", () => (answered = true));
      r.on("error", (err) => {
        if (signal.aborted) return reject(signal.reason);
        const code = (err as NodeJS.ErrnoException).code;
        if (r.reusedSocket && !answered && (code === "ECONNRESET" || code === "EPIPE"))
          return reject(new StaleConnection(this.#broken(err)));
        reject(this.#broken(err));
      });
      r.end(req.body);
    });
  }

  #broken(err: Error): FennecError {
    return new FennecError(
      "FN_CRASHED",
      `${this.#what}: the connection to the instance broke: ${err.message}`,
    );
  }

  close(): void {
    this.#agent.destroy();
  }
}

/** A request that died with the kept-alive connection it was sent on, before any answer. */
class StaleConnection extends Error {
  constructor(readonly error: FennecError) {
    super(error.message);
  }
}
