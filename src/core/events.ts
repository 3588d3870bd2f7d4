import diagnostics from "node:diagnostics_channel";
import type { InvocationRecord, StartType } from "./types.js";

/**
 * Everything observable is published on diagnostics channels; metrics subscribe to them and
 * the core never imports a metrics library. Publishing costs nothing when nobody listens.
 */
export interface InstanceReadyEvent {
  readonly node: string;
  readonly function: string;
  readonly instanceId: string;
  readonly driver: string;
  readonly initMs: number;
  readonly origin: StartType;
}

export interface InstanceStoppedEvent {
  readonly node: string;
  readonly function: string;
  readonly instanceId: string;
  readonly reason: string;
  readonly errorCode: string | undefined;
}

/** Something the async engine did with a call: metrics count retries, dead letters and callbacks. */
export interface AsyncCallEvent {
  readonly node: string;
  readonly function: string;
  readonly callId: string;
  /**
   * `retry`: an attempt failed and runs again later; `requeue`: put back without an attempt
   * counted (the platform's fault); `dead`: dead-lettered; `callback`: a callback ended (`outcome`).
   */
  readonly kind: "retry" | "requeue" | "dead" | "callback";
  readonly outcome?: "delivered" | "failed";
}

export const channels = {
  invocation: diagnostics.channel("fennec:invocation"),
  instanceReady: diagnostics.channel("fennec:instance:ready"),
  instanceStopped: diagnostics.channel("fennec:instance:stopped"),
  functionError: diagnostics.channel("fennec:function:error"),
  log: diagnostics.channel("fennec:log"),
  asyncCall: diagnostics.channel("fennec:async"),
} as const;

/**
 * A line a function wrote (stderr; stdout too for out-of-process sandboxes). The same shape as
 * the store's `LogLine` (src/store/contract.ts): drivers publish, a subscriber in the composition
 * root stores, and drivers never import the store.
 */
export interface LogLineEvent {
  readonly time: number;
  readonly function: string;
  /** The call it was written during, when that is known (one call in flight on its instance). */
  readonly callId: string | undefined;
  readonly instanceId: string | undefined;
  readonly stream: "stdout" | "stderr";
  readonly text: string;
}

/** True when someone keeps function logs: capturing them is skipped otherwise. */
export function logsWanted(): boolean {
  return channels.log.hasSubscribers;
}

export function publishLog(line: LogLineEvent): void {
  if (channels.log.hasSubscribers) channels.log.publish(line);
}

export function publishAsyncCall(event: AsyncCallEvent): void {
  if (channels.asyncCall.hasSubscribers) channels.asyncCall.publish(event);
}

/** Listens to the async events of one node (all when undefined); returns the function that stops it. */
export function subscribeAsync(node: string | undefined, on: (e: AsyncCallEvent) => void): () => void {
  const listener = (msg: unknown) => {
    const e = msg as AsyncCallEvent;
    if (node === undefined || e.node === node) on(e);
  };
  channels.asyncCall.subscribe(listener);
  return () => channels.asyncCall.unsubscribe(listener);
}

export function publishInvocation(record: InvocationRecord): void {
  if (channels.invocation.hasSubscribers) channels.invocation.publish(record);
}

export function publishInstanceReady(event: InstanceReadyEvent): void {
  if (channels.instanceReady.hasSubscribers) channels.instanceReady.publish(event);
}

export function publishInstanceStopped(event: InstanceStoppedEvent): void {
  if (channels.instanceStopped.hasSubscribers) channels.instanceStopped.publish(event);
}

/**
 * Listens to the invocation and instance-ready events of one scheduler (`node`), or of all when
 * `node` is undefined: several Fennecs can share a process, and the channels are process-wide.
 * Calls to a function that does not exist are left out: they are still published (a call is a
 * call), but these listeners keep series per function, and anyone can send random names, so a
 * series per name would grow without bound. Returns the function that stops listening.
 */
export function subscribeNode(
  node: string | undefined,
  on: { invocation: (r: InvocationRecord) => void; ready: (e: InstanceReadyEvent) => void },
): () => void {
  const invocation = (msg: unknown) => {
    const r = msg as InvocationRecord;
    if ((node === undefined || r.node === node) && r.errorCode !== "FUNCTION_NOT_FOUND") on.invocation(r);
  };
  const ready = (msg: unknown) => {
    const e = msg as InstanceReadyEvent;
    if (node === undefined || e.node === node) on.ready(e);
  };
  channels.invocation.subscribe(invocation);
  channels.instanceReady.subscribe(ready);
  return () => {
    channels.invocation.unsubscribe(invocation);
    channels.instanceReady.unsubscribe(ready);
  };
}
