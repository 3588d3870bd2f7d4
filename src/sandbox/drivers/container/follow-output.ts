import { Writable } from "node:stream";
import type Docker from "dockerode";
import type { InstanceLog } from "../../call-log.js";

/**
 * Follows what a container writes to stdout and stderr into its instance's log, through Docker's
 * attach: made before the container starts, so its first lines are not missed (a `logs` follow
 * opened after the start could be, and depends on the engine's log driver). The engine ends the
 * stream when the container stops; the returned function ends it sooner (the instance is being
 * released), so no connection outlives the instance.
 */
export async function followOutput(
  api: Docker,
  container: Docker.Container,
  log: InstanceLog,
): Promise<() => void> {
  const stream = (await container.attach({
    stream: true,
    stdout: true,
    stderr: true,
  })) as NodeJS.ReadWriteStream & {
    destroy(): void;
  };
  const into = (name: "stdout" | "stderr") =>
    new Writable({
      write(chunk: Buffer, _encoding, done) {
        log.write(name, chunk);
        done();
      },
    });
  // Fennec's containers have no TTY, so Docker multiplexes both streams in frames on this one.
  api.modem.demuxStream(stream, into("stdout"), into("stderr"));
  // A broken attach ends the log, never the instance: its exit is learnt from Docker's wait.
  stream.on("error", () => undefined);
  return () => stream.destroy();
}
