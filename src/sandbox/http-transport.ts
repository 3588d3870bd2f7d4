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

  invoke(req: InvokeRequest, signal: AbortSignal): Promise<InvokeResponse> {
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
      r.on("error", (err) => reject(signal.aborted ? signal.reason : this.#broken(err)));
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
