import { CallAbort, type AbortLike } from "../core/call-abort.js";
import { FennecError, toFennecError } from "../core/errors.js";
import { withoutCredentials } from "../core/credentials.js";
import { publishInstanceReady, publishInstanceStopped } from "../core/events.js";
import type { InvokeRequest, InvokeResponse, StartType } from "../core/types.js";
import type { FunctionConfig } from "../config/function-config.js";
import type { InvokeContext, SandboxDriver, SandboxHandle } from "./contract.js";
import type { ReadinessHub } from "./readiness.js";
import { declaredLength, responseTooLarge, TrackedBody } from "./tracked-body.js";
import { WholeBody } from "../core/body.js";
import { InstanceLog } from "./call-log.js";

/** How an invocation ended, for its record. */
export interface InvocationEnd {
  /** Milliseconds from the start to the first byte of the response body (its end if it had none). */
  readonly ttfbMs: number;
  /** Milliseconds from the start to the end of the response body. */
  readonly execMs: number;
  /** What cut it, if anything: after the head this can only cut the body. */
  readonly error: FennecError | undefined;
}

/** A response from `Instance.invoke`: its body is tracked, and `ended` settles (never rejects) when the invocation is over. */
export interface TrackedResponse extends InvokeResponse {
  readonly ended: Promise<InvocationEnd>;
}

/** starting → ready ⇄ busy → stopping → stopped, or failed from anywhere. */
export type InstanceState = "starting" | "ready" | "busy" | "stopping" | "stopped" | "failed";

export interface InstanceOptions {
  readonly id: string;
  readonly driver: SandboxDriver;
  readonly config: FunctionConfig;
  readonly origin: StartType;
  readonly hub: ReadinessHub;
  /** Base URL of the readiness route, e.g. `http://127.0.0.1:8123/ready/`. */
  readonly callbackBase: string;
  readonly startTimeoutMs: number;
  /** The scheduler this instance belongs to, stamped on its events. */
  readonly node?: string;
}

/** What a driver's invoke gets: the call's signal, made only when the driver reads it. */
class InvokeCtx implements InvokeContext {
  readonly #abort: CallAbort;
  constructor(abort: CallAbort) {
    this.#abort = abort;
  }
  get signal(): AbortSignal {
    return this.#abort.signal;
  }
}

/**
 * The lifecycle every sandbox shares, written once: start with a deadline, invoke with the
 * function's timeout, drain (`close`) apart from kill (`destroy`), both idempotent, and events.
 */
export class Instance {
  readonly id: string;
  readonly config: FunctionConfig;
  readonly driver: SandboxDriver;
  readonly createdAt = performance.now();

  // Written only by this class; everyone else (the scheduler, stats) reads the getters below.
  #origin: StartType;
  #state: InstanceState = "starting";
  #active = 0;
  #uses = 0;
  #lastUsed = performance.now();
  #initMs = 0;
  #failure: FennecError | undefined;

  readonly #opts: InstanceOptions;
  #handle: SandboxHandle | undefined;
  #startAbort: AbortController | undefined;
  readonly #inflight = new Set<CallAbort>();
  #closing = false;
  #destroying = false;
  #onDrained: (() => void) | undefined;
  /** Made only for a driver that hands over its sandbox's output (see StartContext.log). */
  #log: InstanceLog | undefined;
  readonly #stopped: Promise<void>;
  #markStopped!: () => void;
  readonly #stopListeners: Array<(instance: Instance) => void> = [];

  constructor(opts: InstanceOptions) {
    this.#opts = opts;
    this.id = opts.id;
    this.config = opts.config;
    this.driver = opts.driver;
    this.#origin = opts.origin;
    this.#stopped = new Promise((resolve) => (this.#markStopped = resolve));
  }

  /** How it started; a cold start the driver served from a snapshot becomes `restored`. */
  get origin(): StartType {
    return this.#origin;
  }

  get state(): InstanceState {
    return this.#state;
  }

  /** Invocations in flight. */
  get active(): number {
    return this.#active;
  }

  /** Invocations served, finished or failed. */
  get uses(): number {
    return this.#uses;
  }

  /** When it became ready or last finished an invocation (`performance.now()`). */
  get lastUsed(): number {
    return this.#lastUsed;
  }

  /** Milliseconds from start to ready. */
  get initMs(): number {
    return this.#initMs;
  }

  /** The error that failed this instance, if any. */
  get failure(): FennecError | undefined {
    return this.#failure;
  }

  /** Called once when the instance reaches `stopped` or `failed`. */
  onStopped(listener: (instance: Instance) => void): void {
    this.#stopListeners.push(listener);
  }

  get isLive(): boolean {
    return this.state === "starting" || this.state === "ready" || this.state === "busy";
  }

  /** Starts the sandbox; rejects with FN_INIT_TIMEOUT or the driver's error, leaving nothing behind. */
  async start(): Promise<void> {
    const { hub, driver, config, startTimeoutMs } = this.#opts;
    const controller = new AbortController();
    this.#startAbort = controller;
    const timer = setTimeout(
      () =>
        controller.abort(
          new FennecError(
            "FN_INIT_TIMEOUT",
            `${config.key}: instance ${this.id} was not ready within ${startTimeoutMs} ms`,
          ),
        ),
      startTimeoutMs,
    );
    hub.expect(this.id);
    const started = performance.now();
    try {
      const logOf = () => (this.#log ??= new InstanceLog(config.key, this.id));
      const handlePromise = driver.start({
        instanceId: this.id,
        config,
        callbackUrl: this.#opts.callbackBase + this.id,
        waitForCallback: () => hub.wait(this.id, controller.signal),
        signal: controller.signal,
        get log() {
          return logOf();
        },
      });
      // A driver that finishes starting after the deadline still hands back a sandbox: kill it.
      handlePromise.then((h) => (controller.signal.aborted ? h.destroy() : undefined)).catch(() => undefined);
      const aborted = new Promise<never>((_, reject) => {
        const fail = () => reject(controller.signal.reason);
        if (controller.signal.aborted) fail();
        controller.signal.addEventListener("abort", fail, { once: true });
      });
      this.#handle = await Promise.race([handlePromise, aborted]);
    } catch (err) {
      const error = toFennecError(
        controller.signal.aborted ? controller.signal.reason : err,
        "SANDBOX_START_FAILED",
      );
      this.#finish("failed", error);
      throw error;
    } finally {
      clearTimeout(timer);
      hub.forget(this.id);
      this.#startAbort = undefined;
    }
    this.#handle.onExit?.((reason) => {
      if (this.state !== "stopped" && this.state !== "failed")
        void this.destroy(toFennecError(reason, "FN_CRASHED"));
    });
    if (this.#handle.restored && this.origin === "cold") this.#origin = "restored";
    this.#initMs = performance.now() - started;
    this.#lastUsed = performance.now();
    this.#state = "ready";
    publishInstanceReady({
      node: this.#opts.node ?? "",
      function: config.key,
      instanceId: this.id,
      driver: driver.name,
      initMs: this.initMs,
      origin: this.origin,
    });
  }

  /**
   * Runs one invocation under the function's timeout. It resolves with the response head; the
   * invocation lasts until the response body has ended, failed or been destroyed (`ended` says
   * when and how), and the timeout covers all of it: a timeout or destroy cuts the body with its
   * error, and a timeout destroys the instance. Aborting `signal` (the client went away) cancels it.
   */
  invoke(request: InvokeRequest, signal?: AbortLike): Promise<TrackedResponse> {
    try {
      const response = this.run(request, signal);
      return response instanceof Promise ? response : Promise.resolve(response);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * `invoke`, answering at once when the sandbox did (`SandboxHandle.invokeNow`: a wasm call run
   * to its end on this thread) and throwing at once what it would reject with. The scheduler's
   * dispatch takes this: a warm call on the gateway's thread then makes no timer, no listener and
   * no promise of the lifecycle's but its `ended`.
   */
  run(request: InvokeRequest, signal?: AbortLike): TrackedResponse | Promise<TrackedResponse> {
    const handle = this.#handle;
    if (!handle || (this.state !== "ready" && this.state !== "busy")) {
      throw new FennecError("INSTANCE_GONE", `instance ${this.id} is ${this.state}`);
    }
    this.#active++;
    this.#state = "busy";
    const began = performance.now();
    const callId = request.call?.callId;
    this.#log?.begin(callId);
    // Every sandbox receives requests here, where the function's config is known.
    const forwarded = this.config.forwardCredentials ? request : withoutCredentials(request);
    const controller = new CallAbort();
    // The signal is made only if the driver takes it (see CallAbort).
    const ctx = new InvokeCtx(controller);
    if (!handle.invokeNow || signal?.aborted)
      return this.#follow(() => handle.invoke(forwarded, ctx), request, signal, controller, began, callId);
    let head: InvokeResponse | Promise<InvokeResponse>;
    try {
      head = handle.invokeNow(forwarded, ctx);
    } catch (err) {
      const error = toFennecError(err);
      this.#done(request, error, callId);
      throw error;
    }
    if (head instanceof Promise || !(head.body instanceof WholeBody)) {
      const later = head instanceof Promise ? head : Promise.resolve(head);
      return this.#follow(() => later, request, signal, controller, began, callId);
    }
    // Answered whole, at once: the invocation is over before anything could cut it.
    const limit = this.config.maxResponseBodyBytes;
    if (limit !== undefined && head.body.size > limit) {
      const error = responseTooLarge(`${this.config.key}: instance ${this.id}`, limit);
      head.body.destroy(error);
      this.#done(request, error, callId);
      throw error;
    }
    this.#done(request, undefined, callId);
    const execMs = performance.now() - began;
    return {
      status: head.status,
      headers: head.headers,
      body: head.body,
      ended: Promise.resolve({ ttfbMs: execMs, execMs, error: undefined }),
    };
  }

  /** An invocation is over: the bookkeeping every way out shares. */
  #done(request: InvokeRequest, error: FennecError | undefined, callId: string | undefined): void {
    this.#log?.end(callId);
    this.#active--;
    this.#uses++;
    this.#lastUsed = performance.now();
    if (this.state === "busy" && this.active === 0) this.#state = "ready";
    if (this.active === 0) this.#onDrained?.();
    // Whatever of the request body was not sent is not wanted any more.
    if (error && !request.body.readableEnded) request.body.destroy();
  }

  /** The rest of an invocation whose head `begin` brings later: timeout, cancellation, the body's end. */
  async #follow(
    begin: () => Promise<InvokeResponse>,
    request: InvokeRequest,
    signal: AbortLike | undefined,
    controller: CallAbort,
    began: number,
    callId: string | undefined,
  ): Promise<TrackedResponse> {
    this.#inflight.add(controller);
    const { timeoutMs, key } = this.config;
    const timer = setTimeout(() => {
      const error = new FennecError("FN_TIMEOUT", `${key}: invocation exceeded the ${timeoutMs} ms timeout`);
      controller.abort(error);
      // A timed-out sandbox may still be running the function: it cannot be trusted again.
      void this.destroy(error);
    }, timeoutMs);
    const onCancel = () =>
      controller.abort(
        new FennecError("CLIENT_GONE", `${key}: the client went away; the invocation is cancelled`),
      );
    if (signal?.aborted) onCancel();
    signal?.addEventListener("abort", onCancel, { once: true });

    let resolveEnded!: (end: InvocationEnd) => void;
    const ended = new Promise<InvocationEnd>((resolve) => (resolveEnded = resolve));
    let over = false;
    const finish = (error: FennecError | undefined, firstByteAt: number) => {
      if (over) return;
      over = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onCancel);
      this.#inflight.delete(controller);
      this.#done(request, error, callId);
      resolveEnded({ ttfbMs: firstByteAt - began, execMs: performance.now() - began, error });
    };

    // The head or the abort, whichever comes first: timeout, destroy and cancel all abort, and the
    // caller is answered at once even if the sandbox never is. (One promise and one listener: this
    // is every warm call's path.)
    let response: InvokeResponse;
    try {
      response = await new Promise<InvokeResponse>((resolve, reject) => {
        const onAbort = () => reject(controller.reason);
        controller.addEventListener("abort", onAbort);
        begin().then(
          (head) => {
            controller.removeEventListener("abort", onAbort);
            // A head that comes after the abort has no reader: its body is dropped.
            if (controller.aborted) head.body.destroy();
            else resolve(head);
          },
          (err: unknown) => {
            controller.removeEventListener("abort", onAbort);
            reject(err);
          },
        );
      });
    } catch (err) {
      const error = toFennecError(err);
      finish(error, performance.now());
      throw error;
    }
    if (controller.aborted) {
      // The abort came after the head, before this resumed: the body is not wanted.
      response.body.destroy();
      const error = toFennecError(controller.reason);
      finish(error, performance.now());
      throw error;
    }
    const what = `${key}: instance ${this.id}`;
    const limit = this.config.maxResponseBodyBytes;
    const whole = response.body instanceof WholeBody ? response.body : undefined;
    if (limit !== undefined && (whole?.size ?? declaredLength(response.headers)) > limit) {
      // Refused before its head is out, so the client gets the error, not a cut response. The
      // body's own 'error' on destroy (undici's "Request aborted") has no reader: it is dropped.
      const error = responseTooLarge(what, limit);
      response.body.on("error", () => undefined).destroy(error);
      finish(error, performance.now());
      throw error;
    }
    if (whole) {
      // The whole body is at hand: the invocation is over; nothing is left to cut or track.
      finish(undefined, performance.now());
      return { status: response.status, headers: response.headers, body: whole, ended };
    }
    const body = new TrackedBody(response.body, what, (end) => finish(end.error, end.firstByteAt), limit);
    controller.addEventListener("abort", () => body.cut(toFennecError(controller.reason)));
    return { status: response.status, headers: response.headers, body, ended };
  }

  /** Graceful stop: lets in-flight invocations finish, then closes the sandbox. Idempotent. */
  close(): Promise<void> {
    if (this.state === "starting") return this.destroy();
    if (this.#closing || this.#destroying || !this.isLive) return this.#stopped;
    this.#closing = true;
    this.#state = "stopping";
    void (async () => {
      if (this.active > 0) await new Promise<void>((resolve) => (this.#onDrained = resolve));
      if (this.#destroying) return;
      try {
        await this.#handle?.close();
      } catch {
        await this.#kill();
      }
      this.#finish("stopped", undefined);
    })();
    return this.#stopped;
  }

  /** Immediate stop: kills the sandbox whatever it is doing. Idempotent; escalates a pending close. */
  destroy(reason?: FennecError): Promise<void> {
    if (reason && !this.failure) this.#failure = reason;
    if (this.#destroying || this.state === "stopped" || this.state === "failed") return this.#stopped;
    this.#destroying = true;
    if (this.state === "starting") {
      this.#startAbort?.abort(
        reason ?? new FennecError("INSTANCE_GONE", `instance ${this.id} was stopped while starting`),
      );
      return this.#stopped;
    }
    this.#state = "stopping";
    const gone = reason ?? new FennecError("INSTANCE_GONE", `instance ${this.id} was destroyed`);
    for (const c of this.#inflight) c.abort(gone);
    void this.#kill().then(() => this.#finish(this.failure ? "failed" : "stopped", this.failure));
    return this.#stopped;
  }

  async #kill(): Promise<void> {
    await this.#handle?.destroy().catch(() => undefined);
  }

  /** Resolves once the instance has stopped, however that happened. */
  get stopped(): Promise<void> {
    return this.#stopped;
  }

  #finish(state: "stopped" | "failed", error: FennecError | undefined): void {
    if (this.state === "stopped" || this.state === "failed") return;
    this.#state = state;
    if (error) this.#failure = error;
    publishInstanceStopped({
      node: this.#opts.node ?? "",
      function: this.config.key,
      instanceId: this.id,
      reason: state,
      errorCode: error?.code,
    });
    this.#log?.flush();
    for (const listener of this.#stopListeners.splice(0)) listener(this);
    this.#markStopped();
  }
}
