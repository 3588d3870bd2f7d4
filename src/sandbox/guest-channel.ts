import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { Duplex } from "node:stream";
import { FennecError } from "../core/errors.js";
import type { InstanceLog } from "./call-log.js";

/**
 * The host side of the Fennec guest channel (docs/guest-channel.md): one byte stream to a VM
 * guest (virtio-serial port or UART) carrying framed, multiplexed streams. Each stream is one
 * HTTP/1.1 connection to the function, so the ordinary HTTP client runs over it unchanged.
 */
export const FrameType = {
  READY: 1,
  OPEN: 2,
  DATA: 3,
  EOF: 4,
  CLOSE: 5,
  LOG: 6,
  PING: 7,
  PONG: 8,
  CONNECT: 9,
} as const;

/** The bit every id of a stream the guest opens (CONNECT) has, and no id the host picks has. */
export const GUEST_STREAM = 0x80000000;

const HEADER = 9;
export const MAX_PAYLOAD = 65536;
const LOG_TAIL = 8192;

/**
 * The function-log stream a LOG frame's stream field names: 2 is the function's stderr (the Linux
 * agent); 1, its stdout, and 0, a unikernel's console, are stdout.
 */
export function logStream(stream: number): "stdout" | "stderr" {
  return stream === 2 ? "stderr" : "stdout";
}

export function encodeFrame(type: number, stream: number, payload: Uint8Array = Buffer.alloc(0)): Buffer {
  const frame = Buffer.allocUnsafe(HEADER + payload.byteLength);
  frame.writeUInt8(type, 0);
  frame.writeUInt32LE(stream, 1);
  frame.writeUInt32LE(payload.byteLength, 5);
  frame.set(payload, HEADER);
  return frame;
}

/** Splits a byte stream into frames; keeps a partial frame until the rest arrives. */
export class FrameDecoder {
  #pending: Buffer = Buffer.alloc(0);

  /** Feeds bytes; calls `onFrame` for each whole frame. Throws on a frame that breaks the rules. */
  push(chunk: Buffer, onFrame: (type: number, stream: number, payload: Buffer) => void): void {
    let buf = this.#pending.length === 0 ? chunk : Buffer.concat([this.#pending, chunk]);
    while (buf.length >= HEADER) {
      const length = buf.readUInt32LE(5);
      if (length > MAX_PAYLOAD) throw new Error(`a frame of ${length} bytes exceeds ${MAX_PAYLOAD}`);
      if (buf.length < HEADER + length) break;
      onFrame(buf.readUInt8(0), buf.readUInt32LE(1), buf.subarray(HEADER, HEADER + length));
      buf = buf.subarray(HEADER + length);
    }
    // Copy the remainder so a large chunk is not kept alive by a small tail.
    this.#pending = Buffer.from(buf);
  }
}

/**
 * One multiplexed stream, shaped like the net.Socket an http.Agent expects (it calls
 * setKeepAlive, setNoDelay, setTimeout, ref and unref on its sockets).
 */
class ChannelStream extends Duplex {
  readonly id: number;
  readonly #channel: GuestChannel;
  #released = false;

  constructor(channel: GuestChannel, id: number) {
    super({ allowHalfOpen: false });
    this.#channel = channel;
    this.id = id;
  }

  override _read(): void {
    // Data is pushed as frames arrive; the channel has no per-stream flow control.
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    for (let off = 0; off < chunk.length; off += MAX_PAYLOAD) {
      this.#channel.send(FrameType.DATA, this.id, chunk.subarray(off, off + MAX_PAYLOAD));
    }
    done();
  }

  override _final(done: (err?: Error | null) => void): void {
    this.#channel.send(FrameType.EOF, this.id);
    done();
  }

  override _destroy(err: Error | null, done: (err: Error | null) => void): void {
    this.release(true);
    done(err);
  }

  /** Forgets the stream; tells the guest unless the guest closed it first. */
  release(tellGuest: boolean): void {
    if (this.#released) return;
    this.#released = true;
    this.#channel.forget(this.id);
    if (tellGuest) this.#channel.send(FrameType.CLOSE, this.id);
  }

  setKeepAlive(): this {
    return this;
  }
  setNoDelay(): this {
    return this;
  }
  setTimeout(_ms: number, cb?: () => void): this {
    if (cb) this.once("timeout", cb);
    return this;
  }
  ref(): this {
    return this;
  }
  unref(): this {
    return this;
  }
}

/**
 * A guest channel over a connected socket (QEMU's chardev). Emits `ready` when the guest sends
 * READY, `pong` with the PING payload, and `closed` when the connection ends (the VM is gone).
 */
export class GuestChannel extends EventEmitter {
  readonly #socket: Socket;
  readonly #decoder = new FrameDecoder();
  readonly #streams = new Map<number, ChannelStream>();
  #nextId = 1;
  #log = "";
  #closed: Error | undefined;
  #onGuestStream: ((stream: Duplex) => void) | undefined;
  readonly ready: Promise<void>;

  readonly #logTo: InstanceLog | undefined;

  /** `log` receives the guest's LOG frames as function logs (see logStream). */
  constructor(
    socket: Socket,
    readonly what: string,
    log?: InstanceLog,
  ) {
    super();
    this.#socket = socket;
    this.#logTo = log;
    this.ready = new Promise((resolve, reject) => {
      this.once("ready", resolve);
      this.once("closed", (reason: Error) => reject(reason));
    });
    this.ready.catch(() => undefined); // observed by whoever awaits it; never unhandled
    socket.on("data", (chunk: Buffer) => {
      try {
        this.#decoder.push(chunk, (type, stream, payload) => this.#onFrame(type, stream, payload));
      } catch (err) {
        this.#fail(
          new FennecError(
            "FN_CRASHED",
            `${what}: the guest broke the channel protocol: ${(err as Error).message}`,
          ),
        );
      }
    });
    socket.on("error", (err) =>
      this.#fail(new FennecError("FN_CRASHED", `${what}: channel error: ${err.message}`)),
    );
    socket.on("close", () =>
      this.#fail(new FennecError("FN_CRASHED", `${what}: the guest's channel closed`)),
    );
  }

  /** The newest console text the guest sent as LOG frames. */
  get log(): string {
    return this.#log;
  }

  #onFrame(type: number, stream: number, payload: Buffer): void {
    switch (type) {
      case FrameType.READY:
        this.emit("ready", payload.toString());
        break;
      case FrameType.DATA:
        this.#streams.get(stream)?.push(payload);
        break;
      case FrameType.EOF:
        this.#streams.get(stream)?.push(null);
        break;
      case FrameType.CLOSE: {
        const s = this.#streams.get(stream);
        if (!s) break;
        s.release(false);
        // Whatever DATA came before the CLOSE is still read (a `Connection: close` response);
        // then the stream ends. A guest that refused or dropped the stream before answering: the
        // HTTP client sees the socket end, which it reports as a broken connection.
        s.push(null);
        if (s.readableEnded) s.destroy();
        else s.once("end", () => s.destroy());
        break;
      }
      case FrameType.LOG:
        this.#log = (this.#log + payload.toString()).slice(-LOG_TAIL);
        this.#logTo?.write(logStream(stream), payload);
        break;
      case FrameType.PONG:
        this.emit("pong", payload.toString());
        break;
      case FrameType.CONNECT:
        this.#guestOpened(stream);
        break;
      default:
        // Unknown frame types are ignored (forward compatibility).
        break;
    }
  }

  /**
   * Serves streams the guest opens to the host (CONNECT: the handler binding) with `handler`;
   * until one is set, the guest's streams are refused.
   */
  onGuestStream(handler: (stream: Duplex) => void): void {
    this.#onGuestStream = handler;
  }

  #guestOpened(id: number): void {
    // An id outside the guest's range, or one in use, would mix two streams' bytes: refused.
    if ((id & GUEST_STREAM) === 0 || this.#streams.has(id))
      return this.send(FrameType.CLOSE, id, Buffer.from("bad stream id"));
    if (!this.#onGuestStream) return this.send(FrameType.CLOSE, id, Buffer.from("no binding"));
    const s = new ChannelStream(this, id);
    this.#streams.set(id, s);
    this.#onGuestStream(s);
  }

  /** Opens a stream to the function: an HTTP/1.1 connection as far as the caller can tell. */
  openStream(): Duplex {
    if (this.#closed) throw this.#closed;
    const id = this.#nextId++;
    const s = new ChannelStream(this, id);
    this.#streams.set(id, s);
    this.send(FrameType.OPEN, id);
    return s;
  }

  /** Resolves when the guest answers a PING: it is running and serving (e.g. after a restore). */
  ping(signal: AbortSignal): Promise<void> {
    // Random: the agent also mixes it into the guest's entropy pool (restored clones share theirs).
    const token = randomBytes(24).toString("hex");
    return new Promise((resolve, reject) => {
      if (this.#closed) return reject(this.#closed);
      const onPong = (payload: string) => {
        if (payload !== token) return;
        cleanup();
        resolve();
      };
      const onAbort = () => {
        cleanup();
        reject(signal.reason);
      };
      const onClosed = (reason: Error) => {
        cleanup();
        reject(reason);
      };
      const cleanup = () => {
        this.off("pong", onPong);
        this.off("closed", onClosed);
        signal.removeEventListener("abort", onAbort);
      };
      this.on("pong", onPong);
      this.once("closed", onClosed);
      signal.addEventListener("abort", onAbort, { once: true });
      this.send(FrameType.PING, 0, Buffer.from(token));
    });
  }

  send(type: number, stream: number, payload?: Uint8Array): void {
    if (this.#closed) return;
    this.#socket.write(encodeFrame(type, stream, payload));
  }

  forget(id: number): void {
    this.#streams.delete(id);
  }

  #fail(reason: Error): void {
    if (this.#closed) return;
    this.#closed = reason;
    for (const s of this.#streams.values()) s.destroy(reason);
    this.#streams.clear();
    this.emit("closed", reason);
  }

  close(): void {
    this.#fail(new FennecError("INSTANCE_GONE", `${this.what}: stopped`));
    this.#socket.destroy();
  }
}
