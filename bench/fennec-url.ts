import type { ChildProcess } from "node:child_process";

/** The address a spawned `fennec serve` announces on stderr once it listens (it exits otherwise). */
export function fennecUrl(child: ChildProcess): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    let log = "";
    child.stderr!.on("data", (d: Buffer) => {
      log += d.toString();
      const m = /on (http:\/\/127\.0\.0\.1:\d+)/.exec(log);
      if (m) resolve(m[1]!);
    });
    child.once("exit", (c) => reject(new Error(`fennec exited ${c}: ${log}`)));
  });
}
