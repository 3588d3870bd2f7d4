// The same handler as hello-process, in a QEMU microVM: Fennec packs Node, its handler runtime and
// this bundle into a root filesystem on an ext4 virtio disk, and boots its own small Linux guest around it.
// `?name=you` personalises the greeting.
export default {
  fetch(request: Request): Response {
    const name = new URL(request.url).searchParams.get("name");
    return new Response(`hello from Fennec (a QEMU microVM)${name ? `, ${name}` : ""}!\n`, {
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  },
};
