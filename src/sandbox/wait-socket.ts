import { connect } from "node:net";

/**
 * Resolves once something accepts connections on the Unix socket `path`: how Fennec learns that an
 * instance without a network (which cannot call back) is ready. Polls every 2 ms until `signal`.
 */
export function waitForSocket(path: string, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const attempt = () => {
      if (signal.aborted) return reject(signal.reason);
      const s = connect(path);
      s.once("connect", () => {
        s.destroy();
        resolve();
      });
      s.once("error", () => setTimeout(attempt, 2));
    };
    attempt();
  });
}
