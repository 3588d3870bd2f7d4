import { EventEmitter } from "node:events";
import { connect, type Socket } from "node:net";

/** A QMP error answer: the command ran and QEMU refused it. */
export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    desc: string,
  ) {
    super(`QMP ${command}: ${errorClass}: ${desc}`);
    this.name = "QmpError";
  }
}

interface Pending {
  readonly command: string;
  readonly resolve: (value: unknown) => void;
  readonly reject: (err: Error) => void;
}

/**
 * A client of the QEMU Machine Protocol on a Unix socket: newline-delimited JSON, a greeting,
 * `qmp_capabilities`, then commands answered in order (matched by `id`) and asynchronous events
 * (emitted as `event` with name and data).
 */
export class QmpClient extends EventEmitter {
  readonly #socket: Socket;
  readonly #pending = new Map<number, Pending>();
  #buffer = "";
  #nextId = 1;
  #closedReason: Error | undefined;

  private constructor(socket: Socket) {
    super();
    this.#socket = socket;
    socket.setEncoding("utf8");
    socket.on("data", (text: string) => this.#onData(text));
    const end = (err?: Error) => {
      this.#closedReason ??= err ?? new Error("QMP connection closed");
      for (const p of this.#pending.values()) p.reject(this.#closedReason);
      this.#pending.clear();
    };
    socket.on("error", end);
    socket.on("close", () => end());
  }

  /** Connects, waits for the greeting and leaves capabilities negotiation mode. */
  static async connect(path: string, signal: AbortSignal): Promise<QmpClient> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const attempt = () => {
        if (signal.aborted) return reject(signal.reason);
        const s = connect(path);
        s.once("connect", () => resolve(s));
        s.once("error", () => {
          s.destroy();
          setTimeout(attempt, 5);
        });
      };
      attempt();
    });
    const client = new QmpClient(socket);
    await new Promise<void>((resolve, reject) => {
      client.once("greeting", () => resolve());
      socket.once("close", () => reject(new Error("QMP closed before its greeting")));
    });
    await client.execute("qmp_capabilities");
    return client;
  }

  #onData(text: string): void {
    this.#buffer += text;
    let nl: number;
    while ((nl = this.#buffer.indexOf("\n")) >= 0) {
      const line = this.#buffer.slice(0, nl).trim();
      this.#buffer = this.#buffer.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue; // QEMU writes only JSON here; a torn line is not ours to interpret
      }
      if ("QMP" in msg) this.emit("greeting", msg["QMP"]);
      else if ("event" in msg) this.emit("event", msg["event"], msg["data"]);
      else if (typeof msg["id"] === "number") {
        const p = this.#pending.get(msg["id"]);
        if (!p) continue;
        this.#pending.delete(msg["id"]);
        const error = msg["error"] as { class?: string; desc?: string } | undefined;
        if (error) p.reject(new QmpError(p.command, error.class ?? "GenericError", error.desc ?? ""));
        else p.resolve(msg["return"]);
      }
    }
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.#closedReason) return Promise.reject(this.#closedReason);
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject });
      this.#socket.write(
        `${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`,
      );
    });
  }

  close(): void {
    this.#socket.destroy();
  }
}
