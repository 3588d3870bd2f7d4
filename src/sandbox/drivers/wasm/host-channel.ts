/**
 * Host calls from an executor thread, answered by the main thread. A Faasm function's host call
 * (chain, await, state) is synchronous for the guest, but what serves it (the store, the
 * scheduler) lives on the main thread and is asynchronous. So the executor posts the request on a
 * port of its own and blocks (`Atomics.wait` on a shared word: no CPU); the main thread serves it
 * and posts the reply on the same port, then raises the word; the executor wakes and takes the
 * reply off the port synchronously (`receiveMessageOnPort`). A reply of any size goes whole this
 * way (structured clone, its buffers transferred), so a large output or state value needs no
 * chunking through a fixed shared buffer.
 */
import { MessageChannel, receiveMessageOnPort, type MessagePort } from "node:worker_threads";

/** What a guest may ask the host (faasm-imports.ts builds them, faasm-host.ts serves them). */
export type HostRequest =
  | { readonly op: "chain"; readonly name: string; readonly input: Uint8Array }
  | { readonly op: "await"; readonly id: number; readonly output: boolean }
  | { readonly op: "state-get"; readonly key: string }
  | { readonly op: "state-set"; readonly key: string; readonly value: Uint8Array }
  | { readonly op: "state-write"; readonly key: string; readonly offset: number; readonly value: Uint8Array }
  | { readonly op: "state-append"; readonly key: string; readonly value: Uint8Array }
  | { readonly op: "state-appended"; readonly key: string }
  | { readonly op: "state-clear-appended"; readonly key: string }
  | { readonly op: "lock"; readonly key: string; readonly mode: "read" | "write"; readonly release: boolean };

export type HostReply =
  | {
      readonly ok: true;
      readonly value?: number;
      readonly bytes?: Uint8Array | undefined;
      readonly list?: Uint8Array[];
    }
  | { readonly ok: false; readonly code: string; readonly message: string };

interface Envelope<T> {
  readonly seq: number;
  readonly body: T;
}

/** A host call failed with a Fennec error: the guest is stopped and its call fails with `code`. */
export class HostCallFailure extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** The word is 0 while a call is outstanding, 1 once its reply is on the port. */
const REPLIED = 1;

/** The executor's side: blocking calls. */
export class HostChannelClient {
  readonly #port: MessagePort;
  readonly #word: Int32Array;
  #seq = 0;

  constructor(port: MessagePort, signal: SharedArrayBuffer) {
    this.#port = port;
    this.#word = new Int32Array(signal);
  }

  /** Asks the host and blocks until it answers; a failure throws HostCallFailure. */
  call(body: HostRequest): Exclude<HostReply, { ok: false }> {
    const seq = ++this.#seq;
    Atomics.store(this.#word, 0, 0);
    this.#port.postMessage({ seq, body } satisfies Envelope<HostRequest>);
    for (;;) {
      while (Atomics.load(this.#word, 0) !== REPLIED) Atomics.wait(this.#word, 0, 0);
      const got = receiveMessageOnPort(this.#port)?.message as Envelope<HostReply> | undefined;
      // A reply meant for an earlier call cannot come (each waits for its own), but a stray one
      // is skipped rather than taken for this call's.
      if (!got) {
        Atomics.store(this.#word, 0, 0);
        continue;
      }
      if (got.seq !== seq) continue;
      if (!got.body.ok) throw new HostCallFailure(got.body.code, got.body.message);
      return got.body;
    }
  }
}

/** The main thread's side of one executor's channel. */
export class HostChannelServer {
  readonly signal = new SharedArrayBuffer(4);
  /** Goes to the executor in its workerData (transferred). */
  readonly workerPort: MessagePort;
  readonly #port: MessagePort;
  readonly #word: Int32Array;

  constructor(serve: (request: HostRequest) => Promise<HostReply>) {
    const { port1, port2 } = new MessageChannel();
    this.#port = port1;
    this.workerPort = port2;
    this.#word = new Int32Array(this.signal);
    port1.on("message", (msg: Envelope<HostRequest>) => {
      void serve(msg.body).then((reply) => this.#answer(msg.seq, reply));
    });
    // Only a waiting executor keeps the process alive, and the pool refs it while it runs a job.
    port1.unref();
  }

  #answer(seq: number, body: HostReply): void {
    const transfer: ArrayBuffer[] = [];
    if (body.ok) {
      // Own copies (never a view into a larger pooled buffer), so the bytes move without a copy.
      if (body.bytes) transfer.push(body.bytes.buffer as ArrayBuffer);
      for (const b of body.list ?? []) transfer.push(b.buffer as ArrayBuffer);
    }
    this.#port.postMessage({ seq, body } satisfies Envelope<HostReply>, transfer);
    Atomics.store(this.#word, 0, REPLIED);
    Atomics.notify(this.#word, 0);
  }

  close(): void {
    this.#port.close();
  }
}
