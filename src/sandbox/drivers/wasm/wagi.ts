import { FennecError } from "../../../core/errors.js";
import type { BufferedResponse, InvokeRequest } from "../../../core/types.js";

/** A request whose body has been read whole (stdin is a file). */
type BufferedRequest = Omit<InvokeRequest, "body"> & { readonly body: Uint8Array };

/**
 * WAGI, the CGI convention for WASI: the request becomes environment variables and stdin; the
 * response is stdout, optionally led by CGI headers and a blank line.
 */
export function wagiEnvironment(
  request: BufferedRequest,
  scriptName: string,
  extra: Readonly<Record<string, string>>,
): string[] {
  const env: string[] = [
    "GATEWAY_INTERFACE=CGI/1.1",
    "SERVER_PROTOCOL=HTTP/1.1",
    "SERVER_SOFTWARE=Fennec",
    `REQUEST_METHOD=${request.method}`,
    `SCRIPT_NAME=${scriptName}`,
    `PATH_INFO=${request.path}`,
    `QUERY_STRING=${request.query}`,
    `REQUEST_URI=${scriptName}${request.path}${request.query ? "?" + request.query : ""}`,
    `CONTENT_LENGTH=${request.body.byteLength}`,
    `CONTENT_TYPE=${request.headers["content-type"] ?? ""}`,
  ];
  for (const [name, value] of Object.entries(request.headers)) {
    if (name === "content-type" || name === "content-length") continue;
    env.push(`HTTP_${name.toUpperCase().replace(/[^A-Z0-9]/g, "_")}=${value}`);
  }
  for (const [name, value] of Object.entries(extra)) env.push(`${name}=${value}`);
  return env;
}

const HEADER_LINE = /^([A-Za-z0-9!#$%&'*+.^_`|~-]+):[ \t]*(.*)$/;

function findBlankLine(out: Uint8Array): { headerEnd: number; bodyStart: number } | undefined {
  // Headers are short; never scan a large body looking for them.
  const limit = Math.min(out.length, 64 * 1024);
  for (let i = 0; i < limit; i++) {
    if (out[i] !== 0x0a) continue;
    if (out[i + 1] === 0x0a) return { headerEnd: i, bodyStart: i + 2 };
    if (out[i + 1] === 0x0d && out[i + 2] === 0x0a) return { headerEnd: i, bodyStart: i + 3 };
  }
  return undefined;
}

/** Parses a module's stdout into a response; output without a header block is a 200 body. */
export function parseWagiOutput(out: Uint8Array): BufferedResponse {
  const split = findBlankLine(out);
  const plain = (): BufferedResponse => ({
    status: 200,
    headers: [["content-type", "text/plain; charset=utf-8"]],
    body: out,
  });
  if (!split) return plain();
  const lines = Buffer.from(out.buffer, out.byteOffset, split.headerEnd)
    .toString("latin1")
    .replace(/\r$/, "")
    .split(/\r?\n/);
  const headers: Array<[string, string]> = [];
  let status: number | undefined;
  for (const line of lines) {
    const m = HEADER_LINE.exec(line);
    if (!m) return plain();
    const name = m[1]!.toLowerCase();
    const value = m[2]!.trim();
    if (name === "status") {
      const code = Number.parseInt(value, 10);
      if (!(code >= 100 && code <= 999)) {
        throw new FennecError(
          "FN_BAD_RESPONSE",
          `the function sent an invalid Status header: ${JSON.stringify(value)}`,
        );
      }
      status = code;
    } else {
      headers.push([name, value]);
    }
  }
  if (status === undefined) status = headers.some(([n]) => n === "location") ? 302 : 200;
  return { status, headers, body: out.subarray(split.bodyStart) };
}
