/**
 * Synchronous calls as the gateway makes them: each gets a call id (sent as `X-Call-Id`), the
 * `CallHost` it may ask things of, and a record in the invocation store once it is over
 * (OpenWhisk's activation record). The record is written behind: the response never waits for it.
 */
import type { AbortLike } from "../core/call-abort.js";
import { timeOrderedUuid } from "../core/call-id.js";
import type { CallHost } from "../core/call-host.js";
import { toFennecError, type FennecError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import type { FunctionId, InvocationRecord, InvokeRequest } from "../core/types.js";
import type { InvokeOutcome, Scheduler } from "../scheduler/scheduler.js";
import type { CallRecord, InvocationStore } from "../store/contract.js";

/** Makes what a running call may ask of Fennec; `depth` is 0 for a call from a client. */
export type CallHostFactory = (callId: string, user: string, depth: number) => CallHost;

export interface InvocationsOptions {
  readonly scheduler: Pick<Scheduler, "invoke">;
  /** Where records go. */
  readonly store: InvocationStore;
  /** This node's name in records (the host's name by default). */
  readonly node: string;
  /** False keeps no records (`fennec serve --no-records`): calls still get their ids. */
  readonly records: boolean;
  /** Undefined: calls get no CallHost (nothing to chain or keep state with). */
  readonly makeCallHost?: CallHostFactory | undefined;
  readonly log: Logger;
}

export { timeOrderedUuid };

export type SyncOutcome = InvokeOutcome | { error: FennecError; record: InvocationRecord };

/** A call another node of the cluster forwarded here: that node, and why it chose this one. */
export interface ForwardedFrom {
  readonly via: string;
  readonly placement: string | undefined;
}

/** The sync-call service the gateway's invoke path goes through instead of the scheduler itself. */
export class Invocations {
  readonly #o: InvocationsOptions;
  /** Bound once, so recording a call makes no closure beyond the one that carries its id. */
  readonly #failedWrite = (err: unknown): void => {
    this.#o.log.warn("could not record a call", { error: toFennecError(err).message });
  };

  constructor(options: InvocationsOptions) {
    this.#o = options;
  }

  /** Whether calls leave records. */
  get recording(): boolean {
    return this.#o.records;
  }

  /** A new call's id. */
  newCallId(): string {
    return timeOrderedUuid(Date.now());
  }

  /** What the call `callId` of a function of `user` may ask (undefined without a factory). */
  callHost(callId: string, user: string): CallHost | undefined {
    return this.#o.makeCallHost?.(callId, user, 0);
  }

  /**
   * Runs the call through the scheduler (never throws, as `Scheduler.invoke`), and records it
   * when it is over: at once for a failure before the response head, else when the body ends.
   */
  async invoke(
    callId: string,
    id: FunctionId,
    request: InvokeRequest,
    signal: AbortLike | undefined,
    forwarded?: ForwardedFrom,
  ): Promise<SyncOutcome> {
    const submittedAt = Date.now();
    const outcome = await this.#o.scheduler.invoke(id, request, signal);
    if (!this.#o.records) return outcome;
    if ("error" in outcome)
      this.#write(callId, submittedAt, outcome.record, outcome.error.message, forwarded);
    else
      outcome.record.then(
        (record) => this.#write(callId, submittedAt, record, undefined, forwarded),
        this.#failedWrite,
      );
    return outcome;
  }

  /**
   * The record of a call this node forwarded to `node` that was lost there (NODE_LOST): the node
   * that ran it wrote none (a call that ends there is recorded there, with its figures).
   */
  recordLost(
    callId: string,
    fn: string,
    lost: {
      node: string;
      placement: string;
      submittedAt: number;
      status: number | undefined;
      error: FennecError;
    },
  ): void {
    if (!this.#o.records) return;
    const record: CallRecord = {
      id: callId,
      function: fn,
      kind: "sync",
      state: "failed",
      node: lost.node,
      parentId: undefined,
      attempt: 1,
      submittedAt: lost.submittedAt,
      startedAt: undefined,
      finishedAt: Date.now(),
      startType: undefined,
      queueWaitMs: undefined,
      initMs: undefined,
      ttfbMs: undefined,
      execMs: undefined,
      status: lost.status,
      errorCode: lost.error.code,
      errorMessage: lost.error.message,
      notBefore: undefined,
      idempotencyKey: undefined,
      callbackUrl: undefined,
      via: this.#o.node,
      placement: lost.placement,
    };
    try {
      this.#o.store.record(record);
    } catch (err) {
      this.#failedWrite(err);
    }
  }

  #write(
    callId: string,
    submittedAt: number,
    figures: InvocationRecord,
    errorMessage: string | undefined,
    forwarded: ForwardedFrom | undefined,
  ): void {
    try {
      // Written out, not spread, and nothing copied out of the figures: this runs once per call.
      this.#o.store.recordSync({
        id: callId,
        node: this.#o.node,
        submittedAt,
        finishedAt: Date.now(),
        figures,
        errorMessage,
        via: forwarded?.via,
        placement: forwarded?.placement,
      });
    } catch (err) {
      this.#failedWrite(err);
    }
  }
}
