import { finished } from "node:stream";
import { WholeBody } from "../core/body.js";
import type { InvokeRequest, InvokeResponse } from "../core/types.js";
import { awaitReady, type Readiness } from "./await-ready.js";
import type { InvokeContext, SandboxHandle, StartContext } from "./contract.js";
import { CALL_ID_HEADER, type HostBinding } from "./host-binding.js";
import { HttpTransport, type Endpoint } from "./http-transport.js";
import type { SupervisedChild } from "./supervised-child.js";

/**
 * The handle of a sandbox that is one supervised child serving HTTP (process, oci, container): a
 * failed invocation is explained by the child's exit, stops and `onExit` are the child's, and the
 * transport is released first of its cleanup. With a `binding` (host-binding.ts), each call that
 * carries a `CallHost` is admitted to it for as long as it runs and named to the function in
 * `x-fennec-call-id`; that header from anyone else never reaches the function.
 */
export class SupervisedHandle implements SandboxHandle {
  readonly child: SupervisedChild;
  readonly #transport: HttpTransport;
  readonly #binding: HostBinding | undefined;

  constructor(child: SupervisedChild, endpoint: Endpoint, binding?: HostBinding) {
    this.child = child;
    this.#binding = binding;
    const transport = new HttpTransport(endpoint, child.what);
    this.#transport = transport;
    child.cleanup.defer(() => transport.close());
  }

  /** The handle of `child`, reached at `endpoint`, once it is ready (`awaitReady`). */
  static async ready(
    child: SupervisedChild,
    endpoint: Endpoint,
    readiness: Readiness,
    ctx: Pick<StartContext, "signal" | "waitForCallback">,
    binding?: HostBinding,
  ): Promise<SupervisedHandle> {
    const handle = new SupervisedHandle(child, endpoint, binding);
    await awaitReady(child, readiness, ctx);
    return handle;
  }

  async invoke(request: InvokeRequest, ctx: InvokeContext): Promise<InvokeResponse> {
    const call = this.#binding ? request.call : undefined;
    let release: (() => void) | undefined;
    if (call || CALL_ID_HEADER in request.headers) {
      const headers: Record<string, string> = { ...request.headers };
      delete headers[CALL_ID_HEADER];
      if (call) {
        release = this.#binding!.admit(call);
        headers[CALL_ID_HEADER] = call.callId;
      }
      request = { ...request, headers };
    }
    try {
      const response = await this.#transport.invoke(request, ctx.signal);
      // The call lasts until its response has been sent: a streaming handler may still chain.
      if (release)
        if (response.body instanceof WholeBody) release();
        else finished(response.body, release);
      return response;
    } catch (err) {
      release?.();
      throw await this.child.explain(err);
    }
  }

  onExit(listener: (reason: Error) => void): void {
    this.child.onExit(listener);
  }

  close(): Promise<void> {
    return this.child.close();
  }

  destroy(): Promise<void> {
    return this.child.destroy();
  }
}
