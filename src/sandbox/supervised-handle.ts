import type { InvokeRequest, InvokeResponse } from "../core/types.js";
import { awaitReady, type Readiness } from "./await-ready.js";
import type { InvokeContext, SandboxHandle, StartContext } from "./contract.js";
import { HttpTransport, type Endpoint } from "./http-transport.js";
import type { SupervisedChild } from "./supervised-child.js";

/**
 * The handle of a sandbox that is one supervised child serving HTTP (process, oci, container): a
 * failed invocation is explained by the child's exit, stops and `onExit` are the child's, and the
 * transport is released first of its cleanup.
 */
export class SupervisedHandle implements SandboxHandle {
  readonly child: SupervisedChild;
  readonly #transport: HttpTransport;

  constructor(child: SupervisedChild, endpoint: Endpoint) {
    this.child = child;
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
  ): Promise<SupervisedHandle> {
    const handle = new SupervisedHandle(child, endpoint);
    await awaitReady(child, readiness, ctx);
    return handle;
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
