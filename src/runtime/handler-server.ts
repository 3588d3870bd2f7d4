/**
 * Fennec's runtime for fetch-style handlers (the handler shape of Workers, Deno and Hono):
 *
 *     export default { fetch(request) { return new Response("hello") } }
 *
 * It serves the handler over HTTP as a Fennec instance: on the Unix socket in FENNEC_SOCKET or on
 * 127.0.0.1:$PORT, then calls the readiness callback given as the last argument (the UniFaaS guest
 * contract). Self-contained on purpose (Node built-ins only): it is copied next to the handler
 * into whatever each sandbox needs. Usage: node handler-server.js BUNDLE.mjs CALLBACK-URL
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { pathToFileURL } from "node:url";

interface Handler {
  fetch(request: Request): Response | Promise<Response>;
}

const [bundle, callback] = process.argv.slice(2);
if (!bundle || !callback) {
  console.error("usage: handler-server BUNDLE.mjs CALLBACK-URL");
  process.exit(2);
}

const loaded = (await import(pathToFileURL(bundle).href)) as { default?: Partial<Handler> };
const handler = loaded.default;
if (!handler || typeof handler.fetch !== "function") {
  console.error(`${bundle}: the handler must \`export default { fetch(request) { ... } }\``);
  process.exit(2);
}
const fetchHandler = handler as Handler;

async function toRequest(req: IncomingMessage): Promise<Request> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  const headers = new Headers();
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2)
    headers.append(req.rawHeaders[i]!, req.rawHeaders[i + 1]!);
  const method = req.method ?? "GET";
  const body = method === "GET" || method === "HEAD" ? undefined : Buffer.concat(chunks);
  return new Request(`http://${req.headers.host ?? "fennec.local"}${req.url ?? "/"}`, {
    method,
    headers,
    body,
  });
}

async function send(res: ServerResponse, response: Response): Promise<void> {
  const body = Buffer.from(await response.arrayBuffer());
  res.statusCode = response.status;
  response.headers.forEach((value, name) => {
    if (name !== "set-cookie" && name !== "content-length") res.setHeader(name, value);
  });
  const cookies = response.headers.getSetCookie();
  if (cookies.length > 0) res.setHeader("set-cookie", cookies);
  res.setHeader("content-length", body.byteLength);
  res.end(body);
}

const server = createServer((req, res) => {
  void (async () => {
    try {
      const response = await fetchHandler.fetch(await toRequest(req));
      if (!(response instanceof Response)) throw new TypeError("fetch() must return a Response");
      await send(res, response);
    } catch (err) {
      // The handler's own failure is its response: a 500 that says why, and a line in its log.
      console.error(err);
      const message = err instanceof Error ? err.message : String(err);
      if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain; charset=utf-8" });
      res.end(`handler error: ${message}\n`);
    }
  })();
});

const socket = process.env["FENNEC_SOCKET"];
const announce = () => {
  if (callback === "ignore") return; // as in UniFaaS: the host learns readiness another way
  fetch(callback).catch((err: unknown) => {
    console.error(`readiness callback to ${callback} failed:`, err);
    // On a socket the host also learns readiness from the socket accepting (a container without a
    // network cannot reach the callback); on TCP the callback is the only signal, so give up.
    if (!socket) process.exit(1);
  });
};
if (socket) server.listen(socket, announce);
else server.listen(Number(process.env["PORT"] ?? 8080), "127.0.0.1", announce);
process.on("SIGTERM", () => server.close(() => process.exit(0)));
