import { readFile } from "node:fs/promises";

/** Mount points at or below `dir` in this process's mount namespace, deepest first. */
export async function mountPointsUnder(dir: string, inclusive = false): Promise<string[]> {
  const info = await readFile("/proc/self/mountinfo", "utf8");
  return info
    .split("\n")
    .map((line) => line.split(" ")[4])
    .filter((m): m is string => m !== undefined)
    .map(unescapeMountPath)
    .filter((m) => m.startsWith(`${dir}/`) || (inclusive && m === dir))
    .sort((a, b) => b.length - a.length);
}

/** mountinfo writes space, tab, newline and backslash in paths as octal escapes (`\040`). */
function unescapeMountPath(path: string): string {
  return path.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}
