import type { InvokeRequest, InvokeResponse } from "../core/types.js";
import type { InvokeContext, SandboxHandle } from "./contract.js";
import type { HttpTransport } from "./http-transport.js";
import type { SupervisedChild } from "./supervised-child.js";

/**
 * The handle of a sandbox that is one supervised child serving HTTP (process, oci, container): a
 * failed invocation is explained by the child's exit, stops and `onExit` are the child's, and the
 * transport is released first of its cleanup.
 */
export class SupervisedHandle implements SandboxHandle {
  readonly child: SupervisedChild;
  readonly #transport: HttpTransport;

  constructor(child: SupervisedChild, transport: HttpTransport) {
    this.child = child;
    this.#transport = transport;
    child.cleanup.defer(() => transport.close());
  }

  async invoke(request: InvokeRequest, ctx: InvokeContext): Promise<InvokeResponse> {
    try {
      return await this.#transport.invoke(request, ctx.signal);
    } catch (err) {
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
