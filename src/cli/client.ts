/** A tiny HTTP client for the CLI's remote commands (uses Node's built-in fetch). */
export interface ClientOptions {
  readonly url: string;
  readonly token: string | undefined;
}

export async function call(
  opts: ClientOptions,
  method: string,
  path: string,
  body?: Uint8Array | string,
  headers: Record<string, string> = {},
): Promise<Response> {
  const h: Record<string, string> = { ...headers };
  if (opts.token) h["authorization"] = `Bearer ${opts.token}`;
  try {
    return await fetch(new URL(path, opts.url), {
      method,
      headers: h,
      ...(body === undefined ? {} : { body: body as string | Uint8Array<ArrayBuffer> }),
    });
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
    throw new Error(
      `cannot reach Fennec at ${opts.url} (${cause}); is \`fennec serve\` running? (--url or FENNEC_URL)`,
    );
  }
}

/** Throws with the server's error code and message unless the response is a success. */
export async function expectOk(res: Response): Promise<Response> {
  if (res.ok) return res;
  const text = await res.text();
  let detail = text;
  try {
    const parsed = JSON.parse(text) as { error?: { code?: string; message?: string } };
    if (parsed.error) detail = `${parsed.error.code}: ${parsed.error.message}`;
  } catch {
    // not JSON: show the text as it is
  }
  throw new Error(`HTTP ${res.status}: ${detail.trim()}`);
}
