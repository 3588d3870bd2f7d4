import { createHash } from "node:crypto";
import { lstat, readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { Header, Parser, Pax, type ReadEntry } from "tar";
import { FennecError } from "../core/errors.js";
import { isSharedPath } from "../registry/registry.js";

/**
 * A function's directory as the cluster shares it (docs/cluster.md, "Functions across nodes"):
 * its regular files, each with its executable bit, and nothing else. Left out: hidden names at any
 * depth (the per-node build outputs in `.fennec/`, temporary files, `.git`), symbolic links (one
 * could point anywhere on the node that unpacks it) and anything not a file or a directory.
 */
export interface FunctionFiles {
  /** Relative path (`/`-separated) -> contents, sorted by path. */
  readonly files: ReadonlyMap<string, SharedFile>;
  /** The content digest: equal files give an equal revision on every node, whatever their mtimes. */
  readonly revision: string;
  /** The newest modification time among the files (a local copy's age when it was never shared). */
  readonly newestMtimeMs: number;
  /** What was left out, relative to the function's directory (logged, not shared). */
  readonly leftOut: readonly string[];
}

export interface SharedFile {
  readonly bytes: Uint8Array;
  readonly executable: boolean;
}

/** The most a shared function may weigh, and hold, when a node unpacks one (a hostile artefact is refused). */
export const MAX_ARTEFACT_BYTES = 512 * 2 ** 20;
export const MAX_ARTEFACT_FILES = 10_000;

/** Reads a function's directory into memory (the caller holds the function's lock: one version, whole). */
export async function readFunctionFiles(dir: string): Promise<FunctionFiles> {
  const files = new Map<string, SharedFile>();
  const leftOut: string[] = [];
  let newestMtimeMs = 0;
  let total = 0;
  const walk = async (rel: string): Promise<void> => {
    const items = await readdir(join(dir, rel), { withFileTypes: true });
    for (const item of items) {
      const path = rel === "" ? item.name : `${rel}/${item.name}`;
      if (!isSharedPath(path)) {
        if (!item.name.startsWith(".")) leftOut.push(path);
        continue;
      }
      if (item.isDirectory()) {
        await walk(path);
      } else if (item.isFile()) {
        const st = await lstat(join(dir, path));
        const bytes = await readFile(join(dir, path));
        total += bytes.byteLength;
        if (total > MAX_ARTEFACT_BYTES || files.size >= MAX_ARTEFACT_FILES)
          throw new FennecError(
            "BODY_TOO_LARGE",
            `a function shared across nodes holds at most ${MAX_ARTEFACT_FILES} files and ${MAX_ARTEFACT_BYTES / 2 ** 20} MiB`,
          );
        files.set(path, { bytes, executable: (st.mode & 0o111) !== 0 });
        newestMtimeMs = Math.max(newestMtimeMs, st.mtimeMs);
      } else {
        leftOut.push(path);
      }
    }
  };
  await walk("");
  return withDigest(files, newestMtimeMs, leftOut);
}

function withDigest(
  unsorted: ReadonlyMap<string, SharedFile>,
  newestMtimeMs: number,
  leftOut: readonly string[],
): FunctionFiles {
  const files = new Map([...unsorted].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  const hash = createHash("sha256");
  for (const [path, file] of files) {
    // Length-prefixed fields: no two different listings hash alike.
    const bytes = Buffer.from(file.bytes.buffer, file.bytes.byteOffset, file.bytes.byteLength);
    hash.update(`${Buffer.byteLength(path)}:${path}:${file.executable ? "x" : "-"}:${bytes.byteLength}:`);
    hash.update(bytes);
  }
  return { files, revision: hash.digest("hex").slice(0, 32), newestMtimeMs, leftOut };
}

/** A plain POSIX tar of the files: fixed owner, mode and mtime, so equal files make equal bytes. */
export function packFunction(fn: FunctionFiles): Buffer {
  const blocks: Buffer[] = [];
  const epoch = new Date(0);
  for (const [path, file] of fn.files) {
    const data = {
      path,
      mode: file.executable ? 0o755 : 0o644,
      size: file.bytes.byteLength,
      mtime: epoch,
      uid: 0,
      gid: 0,
      type: "File" as const,
    };
    const header = new Header(data);
    const block = Buffer.alloc(512);
    // A path longer than ustar's fields goes in a pax header before the entry.
    if (header.encode(block, 0)) {
      blocks.push(new Pax(data).encode());
      const short = new Header({ ...data, path: path.slice(-99) });
      short.encode(block, 0);
    }
    blocks.push(block, Buffer.from(file.bytes), Buffer.alloc((512 - (file.bytes.byteLength % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

/**
 * Unpacks a shared function's tar into memory, refusing (ARTEFACT_INVALID) anything a node must
 * not write: a path that is absolute, climbs out (`..`), is hidden or repeats; a link, device or
 * other special entry; more than MAX_ARTEFACT_FILES files or MAX_ARTEFACT_BYTES. Nothing touches
 * the disk here: the registry writes what passes into a scratch directory and checks it there.
 */
export async function unpackFunction(tar: Uint8Array): Promise<FunctionFiles> {
  if (tar.byteLength > MAX_ARTEFACT_BYTES + 2 ** 20)
    throw new FennecError("ARTEFACT_INVALID", "the shared function is larger than a node accepts");
  const files = new Map<string, SharedFile>();
  let total = 0;
  let refused: FennecError | undefined;
  const refuse = (message: string): void => {
    refused ??= new FennecError("ARTEFACT_INVALID", message);
  };
  const reads: Promise<void>[] = [];
  await new Promise<void>((resolve, reject) => {
    const parser = new Parser({
      strict: true,
      onReadEntry: (entry: ReadEntry) => {
        const path = entry.path.replace(/\/+$/, "");
        if (entry.type === "Directory") {
          if (!isSharedPath(path)) refuse(`the shared function holds a directory ${JSON.stringify(path)}`);
          entry.resume();
          return;
        }
        if (entry.type !== "File" && entry.type !== "OldFile" && entry.type !== "ContiguousFile") {
          refuse(
            `the shared function holds a ${entry.type} entry (${JSON.stringify(path)}); only files are shared`,
          );
          entry.resume();
          return;
        }
        if (!isSharedPath(path) || files.has(path)) {
          refuse(`the shared function holds a file path a node does not write: ${JSON.stringify(path)}`);
          entry.resume();
          return;
        }
        total += entry.size ?? 0;
        if (total > MAX_ARTEFACT_BYTES || files.size >= MAX_ARTEFACT_FILES) {
          refuse("the shared function holds more than a node accepts");
          entry.resume();
          return;
        }
        const chunks: Buffer[] = [];
        const executable = ((entry.mode ?? 0) & 0o111) !== 0;
        files.set(path, { bytes: new Uint8Array(), executable });
        reads.push(
          new Promise<void>((done) => {
            entry.on("data", (c: Buffer) => chunks.push(c));
            entry.on("end", () => {
              files.set(path, { bytes: Buffer.concat(chunks), executable });
              done();
            });
          }),
        );
      },
    });
    parser.on("error", (err: Error) =>
      reject(new FennecError("ARTEFACT_INVALID", `not a tar: ${err.message}`)),
    );
    parser.on("warn", (_code: string, message: string | Error) =>
      refuse(`not a valid tar: ${typeof message === "string" ? message : message.message}`),
    );
    parser.on("end", () => resolve());
    parser.end(Buffer.from(tar.buffer, tar.byteOffset, tar.byteLength));
  });
  await Promise.all(reads);
  // A file that is also another file's directory cannot be written.
  for (const path of files.keys()) {
    const segments = path.split("/");
    for (let i = 1; i < segments.length; i++) {
      const dir = segments.slice(0, i).join("/");
      if (files.has(dir))
        refuse(`the shared function holds ${JSON.stringify(dir)} as a file and a directory`);
    }
  }
  if (refused) throw refused;
  return withDigest(files, 0, []);
}
