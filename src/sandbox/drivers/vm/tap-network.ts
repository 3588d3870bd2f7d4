import { spawn } from "node:child_process";
import { once } from "node:events";
import { createServer as createHttpServer } from "node:http";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { FennecError } from "../../../core/errors.js";
import type { StartContext } from "../../contract.js";
import { findExecutable } from "../../host-view.js";
import type { RelayPlan } from "../../socket-relay.js";
import type { Endpoint } from "../../http-transport.js";
import { TapPool, type TapLease } from "./taps.js";

/** Where a UniFaaS guest serves, and where its callback arrives on the tap's host side (as UniFaaS). */
const GUEST_PORT = 8080;
const TAP_CALLBACK_PORT = 3000;
const RELAY = fileURLToPath(new URL("../../socket-relay.js", import.meta.url));

/** A guest's tap network: its lease, where Fennec reaches it, its callback, its release. */
export interface TapNetwork {
  readonly lease: TapLease;
  readonly endpoint: Endpoint;
  /** Resolves when the guest has called its callback. */
  readonly called: Promise<void>;
  readonly release: () => Promise<void>;
  /** The UniFaaS placeholders of the guest's command line on this network. */
  readonly placeholders: { ip: string; gateway: string; netmask: string; callback: string };
}

export interface TapNetworksOptions {
  /** The range the /30s come from (default 10.100.0.0/16, as UniFaaS). */
  readonly range?: string | undefined;
  /** The network namespace the taps and the VMMs live in (default: Fennec's own). */
  readonly netns?: string | undefined;
}

/**
 * The UniFaaS tap mode for QEMU and Firecracker alike: a tap and its /30 per guest, the guest's
 * callback answered on the tap's host address (where the guest can reach it) and invocations sent
 * to the guest's 8080. In a network namespace a bridge process inside it relays both through Unix
 * sockets. The pool of taps opens on the first tap guest, so a node without one never needs root.
 */
export class TapNetworks {
  readonly #options: TapNetworksOptions;
  #pool: Promise<TapPool> | undefined;

  constructor(options: TapNetworksOptions = {}) {
    this.#options = options;
  }

  /** A tap network for one guest whose run directory is `dir`; its release undoes all of it. */
  async open(ctx: StartContext, dir: string, what: string): Promise<TapNetwork> {
    const pool = await this.#taps();
    const lease = await pool.lease();
    const toRelease: Array<() => unknown> = [() => pool.release(lease)];
    const release = async () => {
      for (const r of toRelease.splice(0).reverse()) await Promise.resolve(r()).catch(() => undefined);
    };
    try {
      let called!: () => void;
      const calledBack = new Promise<void>((resolve) => (called = resolve));
      // The listener is this tap's alone, so whatever calls it is this instance's guest calling back.
      const callbacks = createHttpServer((_req, res) => {
        res.writeHead(200, { connection: "close" }).end("ok");
        called();
      });
      toRelease.push(() => callbacks.close());
      let endpoint: Endpoint;
      if (lease.netns) {
        const guestSock = join(dir, "guest.sock");
        const callbackSock = join(dir, "callback.sock");
        callbacks.listen(callbackSock);
        await once(callbacks, "listening");
        // The guest's callback arrives on the tap's host side and goes out to Fennec's listener;
        // invocations go in to the guest's 8080.
        const plan: RelayPlan = {
          routes: [
            { listen: { host: lease.hostAddress, port: TAP_CALLBACK_PORT }, to: { path: callbackSock } },
            { listen: { path: guestSock }, to: { host: lease.guestAddress, port: GUEST_PORT } },
          ],
        };
        const bridge = spawn(
          findExecutable("ip", "iproute2"),
          ["netns", "exec", lease.netns, process.execPath, RELAY],
          { stdio: ["pipe", "pipe", "pipe"], env: { ...process.env, FENNEC_RELAY: JSON.stringify(plan) } },
        );
        toRelease.push(() => bridge.kill("SIGKILL"));
        const [line] = (await Promise.race([
          once(bridge.stdout, "data"),
          once(bridge, "exit").then(() => {
            throw new FennecError("SANDBOX_START_FAILED", `${what}: the namespace bridge did not start`);
          }),
        ])) as [Buffer];
        if (!line.toString().includes("ready"))
          throw new FennecError(
            "SANDBOX_START_FAILED",
            `${what}: the namespace bridge said ${line.toString()}`,
          );
        endpoint = { socketPath: guestSock };
      } else {
        callbacks.listen(TAP_CALLBACK_PORT, lease.hostAddress);
        await once(callbacks, "listening");
        endpoint = { host: lease.guestAddress, port: GUEST_PORT };
      }
      const path = new URL(ctx.callbackUrl, "http://x").pathname;
      return {
        lease,
        endpoint,
        called: calledBack,
        release,
        placeholders: {
          ip: lease.guestAddress,
          gateway: lease.hostAddress,
          netmask: lease.netmask,
          callback: `http://${lease.hostAddress}:${TAP_CALLBACK_PORT}${path}`,
        },
      };
    } catch (err) {
      await release();
      throw err;
    }
  }

  /** Deletes every tap still held. */
  async close(): Promise<void> {
    const pool = this.#pool;
    this.#pool = undefined;
    await pool?.then((p) => p.close()).catch(() => undefined);
  }

  #taps(): Promise<TapPool> {
    this.#pool ??= TapPool.open({
      ...(this.#options.range ? { range: this.#options.range } : {}),
      ...(this.#options.netns ? { netns: this.#options.netns } : {}),
    });
    this.#pool.catch(() => (this.#pool = undefined));
    return this.#pool;
  }
}
