// Chains a function of the same user asynchronously with this request's body as its input, and
// notes the child's id in the user's state (`chain-process:children`, appended). Without `?await`
// it answers 202 at once with the child's call id (which `GET /fa/calls/<id>` reads later); with
// `?await=1` it waits for the child, and its answer is the child's.

/** What Fennec's handler runtime passes as `env.fennec` (the part this handler uses). */
interface Fennec {
  chain(name: string, body?: Uint8Array | string): Promise<string>;
  await(callId: string): Promise<Response>;
  readonly state: { append(key: string, value: Uint8Array | string): Promise<void> };
}

export default {
  async fetch(request: Request, env: { fennec: Fennec }): Promise<Response> {
    const url = new URL(request.url);
    const to = url.searchParams.get("to") ?? "echo";
    const input = new Uint8Array(await request.arrayBuffer());
    const child = await env.fennec.chain(to, input);
    await env.fennec.state.append("chain-process:children", `${child}\n`);
    if (!url.searchParams.has("await"))
      return Response.json({ callId: child }, { status: 202, headers: { "x-child-call-id": child } });
    const answer = await env.fennec.await(child);
    return new Response(answer.body, {
      status: answer.status,
      headers: { "content-type": "application/octet-stream", "x-child-call-id": child },
    });
  },
};
