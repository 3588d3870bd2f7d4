import { FennecError } from "../../../core/errors.js";
import type { InvokeRequest, InvokeResponse } from "../../../core/types.js";

/**
 * WAGI, the CGI convention for WASI: the request becomes environment variables and stdin; the
 * response is stdout, optionally led by CGI headers and a blank line.
 */
export function wagiEnvironment(
  request: Omit<InvokeRequest, "body">,
  contentLength: number | undefined,
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
    `CONTENT_LENGTH=${contentLength ?? ""}`,
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
/** Headers are short: output with no blank line within this many bytes has no header block. */
export const MAX_HEAD = 64 * 1024;
const NEWLINE = 0x0a;

/**
 * Where the CGI header block of the output so far ends (the body's first byte), 0 when the
 * output has none (all of it is the body), or undefined while that cannot be told yet. It is
 * decided as early as it can be: at the blank line, at a first line that is not a header, or
 * once MAX_HEAD bytes hold no blank line. Output that ends first has no header block.
 */
export function wagiHeadEnd(out: Uint8Array, ended: boolean): number | undefined {
  const limit = Math.min(out.length, MAX_HEAD);
  let lineStart = 0;
  for (let i = out.indexOf(NEWLINE); i >= 0 && i < limit; i = out.indexOf(NEWLINE, i + 1)) {
    const lineEnd = i > lineStart && out[i - 1] === 0x0d ? i - 1 : i;
    if (lineEnd === lineStart) return lineStart === 0 ? 0 : i + 1;
    const line = Buffer.from(out.buffer, out.byteOffset + lineStart, lineEnd - lineStart);
    if (!HEADER_LINE.test(line.toString("latin1"))) return 0;
    lineStart = i + 1;
  }
  return ended || out.length >= MAX_HEAD ? 0 : undefined;
}

/** The status and headers of a CGI header block (as `wagiHeadEnd` delimited it). */
export function parseWagiHead(head: Uint8Array): Pick<InvokeResponse, "status" | "headers"> {
  if (head.byteLength === 0) return { status: 200, headers: [["content-type", "text/plain; charset=utf-8"]] };
  const lines = Buffer.from(head.buffer, head.byteOffset, head.byteLength)
    .toString("latin1")
    .split(/\r?\n/)
    .filter((line) => line !== "");
  const headers: Array<[string, string]> = [];
  let status: number | undefined;
  for (const line of lines) {
    const m = HEADER_LINE.exec(line)!;
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
  return { status, headers };
}
