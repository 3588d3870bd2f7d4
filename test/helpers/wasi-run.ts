/**
 * Runs a WASI command the way the wasm executor does (`@bjorn3/browser_wasi_shim`, `_start` called
 * directly, `proc_exit` caught), with stdout collected, for tests and benchmarks that need a
 * module's output without the driver around it.
 */
import { ConsoleStdout, File, OpenFile, WASI, WASIProcExit } from "@bjorn3/browser_wasi_shim";

export interface WasiRun {
  readonly stdout: Buffer;
  readonly exitCode: number;
}

/** One instance of a module with its WASI state; `run` may be called again after a reset. */
export class WasiInstance {
  readonly instance: WebAssembly.Instance;
  private readonly wasi: WASI;

  constructor(module: WebAssembly.Module, extraImports: WebAssembly.Imports = {}) {
    this.wasi = new WASI([], [], [], { debug: false });
    this.instance = new WebAssembly.Instance(module, {
      ...extraImports,
      wasi_snapshot_preview1: this.wasi.wasiImport,
    });
    // The shim reads memory through `inst`, which start() would set; _start is called directly.
    this.wasi.inst = this.instance as unknown as WASI["inst"];
  }

  get memory(): WebAssembly.Memory {
    return this.instance.exports["memory"] as WebAssembly.Memory;
  }

  /** Runs `_start` with the given environment (`NAME=value`) and stdin; errors other than proc_exit propagate. */
  run(env: string[] = [], stdin: Uint8Array = new Uint8Array(0)): WasiRun {
    const chunks: Uint8Array[] = [];
    this.wasi.env = env;
    this.wasi.fds = [
      new OpenFile(new File(stdin, { readonly: true })),
      new ConsoleStdout((chunk) => chunks.push(chunk.slice())),
      new ConsoleStdout(() => {}),
    ];
    let exitCode = 0;
    try {
      (this.instance.exports["_start"] as () => void)();
    } catch (err) {
      if (!(err instanceof WASIProcExit)) throw err;
      exitCode = err.code;
    }
    return { stdout: Buffer.concat(chunks), exitCode };
  }
}
