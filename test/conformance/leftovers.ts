import { existsSync, readFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { runRoot } from "../../src/sandbox/run-dir.js";

const CGROUPS = "/sys/fs/cgroup";

/**
 * What is left on this host of one instance, whatever its driver: its run directory, a process
 * that names it (in its command line or environment: every out-of-process sandbox is given its
 * instance id, and its run directory is named after it), a mount, or a cgroup named after it next to
 * Fennec's own. A driver's conformance file adds what only it can leave (a container in an engine,
 * a runtime's state, a tap).
 */
export async function leftoversOf(driver: string, instanceId: string): Promise<string[]> {
  const found: string[] = [];
  const dir = join(runRoot(driver), instanceId);
  if (existsSync(dir)) found.push(`run directory ${dir}`);
  for (const pid of await readdir("/proc")) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    const read = (file: string) => readFile(join("/proc", pid, file), "utf8").catch(() => "");
    const [cmdline, environ] = await Promise.all([read("cmdline"), read("environ")]);
    if (cmdline.includes(instanceId) || environ.includes(instanceId))
      found.push(`process ${pid}: ${cmdline.replaceAll("\0", " ").trim().slice(0, 200)}`);
  }
  for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n"))
    if (line.includes(instanceId)) found.push(`mount ${line.split(" ")[4]}`);
  found.push(...(await cgroupsNamed(instanceId)));
  return found;
}

/** Cgroup directories `<Fennec's own group>/<parent>/<name>` in every hierarchy (`fennec/`, `fennec-oci/`). */
async function cgroupsNamed(name: string): Promise<string[]> {
  const own = new Set(
    readFileSync("/proc/self/cgroup", "utf8")
      .split("\n")
      .map((line) => line.split(":")[2])
      .filter((path): path is string => path !== undefined),
  );
  const found: string[] = [];
  for (const hierarchy of await readdir(CGROUPS).catch(() => [] as string[])) {
    for (const path of own) {
      const base = join(CGROUPS, hierarchy, path);
      const parents = await readdir(base, { withFileTypes: true }).catch(() => []);
      for (const parent of parents) {
        const dir = join(base, parent.name, name);
        if (parent.isDirectory() && existsSync(dir)) found.push(`cgroup ${dir}`);
      }
    }
  }
  return found;
}
