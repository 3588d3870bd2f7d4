// The same handler as hello-process, run in a Docker container: Fennec bundles it (esbuild), builds
// a root filesystem with Node and its handler runtime and imports it as an image. `?name=you`
// personalises the greeting.
export default {
  fetch(request: Request): Response {
    const name = new URL(request.url).searchParams.get("name");
    return new Response(`hello from Fennec (a Docker container on gVisor)${name ? `, ${name}` : ""}!\n`, {
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  },
};
