// The same handler as hello-process, in a QEMU pc virtual machine: Fennec packs Node, its handler runtime and
// this bundle into a root filesystem shared over 9p, and boots its own small Linux guest around it.
// `?name=you` personalises the greeting.
export default {
  fetch(request: Request): Response {
    const name = new URL(request.url).searchParams.get("name");
    return new Response(`hello from Fennec (a QEMU pc virtual machine)${name ? `, ${name}` : ""}!\n`, {
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  },
};
