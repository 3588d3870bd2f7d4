/**
 * A graceful stop of a child process: SIGTERM, then SIGKILL once `graceMs` have passed without it
 * exiting. `signal` delivers a signal the driver's way (to a process group, through a runtime);
 * resolves when the child has exited.
 */
export async function terminate(
  signal: (sig: NodeJS.Signals) => void,
  exited: Promise<void>,
  graceMs: number,
): Promise<void> {
  signal("SIGTERM");
  const timer = setTimeout(() => signal("SIGKILL"), graceMs);
  await exited;
  clearTimeout(timer);
}
