// The same handler as hello-process, run in an OCI bundle by runc: Fennec builds it (esbuild) and
// serves it with its handler runtime. `?name=you` personalises the greeting.
export default {
  fetch(request: Request): Response {
    const name = new URL(request.url).searchParams.get("name");
    return new Response(`hello from Fennec (an OCI container on runc)${name ? `, ${name}` : ""}!\n`, {
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  },
};
