// What scripts/build-examples.mjs and scripts/build-unikernels.mjs share: both build artefacts
// that are committed (so `npm start` needs no compiler) and, with --check, prove the committed
// files are exactly what their sources produce (CI runs it).
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";

/** A build failure with the exit code to leave with (2: the toolchain is missing). */
export class Failure extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/**
 * Runs `build(scratch, place)` in a scratch directory that is always removed. `place(built, out,
 * t0)` writes a built artefact over the committed one, or with `check` compares them. Ends with
 * a summary, or exit code 1 when a committed artefact differs (`what` names them, `hint` says how
 * to rebuild).
 */
export function buildArtefacts({ root, check, prefix, what, hint }, build) {
  const scratch = mkdtempSync(join(tmpdir(), prefix));
  let differ = 0;
  const place = (built, out, t0) => {
    const rel = relative(root, out);
    const ms = (performance.now() - t0).toFixed(0);
    if (check) {
      const same = existsSync(out) && readFileSync(out).equals(built);
      if (!same) differ++;
      console.log(`${same ? "same   " : "DIFFERS"} ${rel} (${built.length} bytes, ${ms} ms)`);
    } else {
      writeFileSync(out, built); // not rename: the scratch dir may be on another filesystem
      console.log(`built ${rel} (${built.length} bytes, ${ms} ms)`);
    }
  };
  try {
    build(scratch, place);
  } catch (e) {
    if (!(e instanceof Failure)) throw e;
    console.error(e.message);
    process.exitCode = e.code;
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  if (check && !process.exitCode) {
    if (differ > 0) {
      console.error(`${differ} committed ${what} file(s) differ from their sources: ${hint}`);
      process.exit(1);
    }
    console.log(`every committed ${what} is reproducible from its source`);
  }
}
