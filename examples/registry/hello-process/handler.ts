// The handler shape of Workers, Deno and Hono: Fennec builds it (esbuild) and serves it with its
// handler runtime. `?name=you` personalises the greeting.
export default {
  fetch(request: Request): Response {
    const name = new URL(request.url).searchParams.get("name");
    return new Response(`hello from Fennec (a process)${name ? `, ${name}` : ""}!\n`, {
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  },
};
