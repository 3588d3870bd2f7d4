/** The baseline: a bare node:http server answering with the request body, as echo does. */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";

const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    res.writeHead(200, {
      "content-type": req.headers["content-type"] ?? "application/octet-stream",
      "content-length": body.length,
    });
    res.end(body);
  });
});
server.listen(0, "127.0.0.1", () => process.send!({ port: (server.address() as AddressInfo).port }));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
