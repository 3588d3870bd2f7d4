/** Small fetch wrappers returning status, headers and text in one object. */
export interface Reply {
  readonly status: number;
  readonly headers: Headers;
  readonly text: string;
  json<T = unknown>(): T;
}

export async function request(url: string, init: RequestInit = {}): Promise<Reply> {
  const res = await fetch(url, init);
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, json: <T>() => JSON.parse(text) as T };
}

export function errorCode(reply: Reply): string | undefined {
  try {
    return reply.json<{ error?: { code?: string } }>().error?.code;
  } catch {
    return undefined;
  }
}
