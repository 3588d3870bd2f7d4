import type { FunctionId } from "../core/types.js";

/** The typed, validated view of one function.toml that flows inward from the registry. */
export interface WasmSandboxConfig {
  readonly kind: "wasm";
  /** Absolute path of the module, inside the function directory. */
  readonly module: string;
  /** The most linear memory one instance may have, in MiB. */
  readonly memoryMiB: number;
  readonly env: Readonly<Record<string, string>>;
  /** Guest path -> absolute host directory, granted read-only. */
  readonly dirs: Readonly<Record<string, string>>;
}

export interface VmSandboxConfig {
  readonly kind: "vm";
  /** Absolute path of the kernel or unikernel image; undefined: Fennec's own guest kernel. */
  readonly kernel: string | undefined;
  /** Absolute path of the root disk image (block) or directory (9p), UniFaaS style. */
  readonly image: string | undefined;
  readonly memoryMiB: number;
  readonly cpus: number;
  /** Kernel command line with UniFaaS placeholders (`%ip %gateway %netmask %callback`). */
  readonly cmdline: string;
  readonly hypervisor: Readonly<Record<string, unknown>> & {
    readonly type: "firecracker" | "qemu" | "microvm";
  };
  /** Absolute path of a fetch-style handler that Fennec packs into the guest. */
  readonly handler: string | undefined;
  /** argv of a host program that Fennec packs into the guest (it serves on FENNEC_SOCKET). */
  readonly command: readonly string[] | undefined;
  readonly env: Readonly<Record<string, string>>;
  readonly transport: "channel" | "user" | "tap";
  /** Start instances by restoring a snapshot of a booted, ready guest. */
  readonly snapshot: boolean;
}

export interface ContainerSandboxConfig {
  readonly kind: "container";
  /** A Docker image already on the engine (imported or loaded: no registry is assumed). */
  readonly image: string | undefined;
  /** Absolute path of a fetch-style handler, instead of an image: Fennec builds the image. */
  readonly handler: string | undefined;
  /** Memory limit, also the memory+swap limit (no swap), as in UniFaaS. */
  readonly memoryMiB: number;
  /** A runtime the engine knows (`runsc`); the engine's default (runc) when absent. */
  readonly runtime: string | undefined;
  readonly env: Readonly<Record<string, string>>;
  readonly pids: number;
  readonly network: "none" | "host";
  /** The image serves HTTP on this port in its own network namespace, reached through a relay. */
  readonly port?: number | undefined;
}

export interface ProcessSandboxConfig {
  readonly kind: "process";
  /** argv; the readiness callback URL is appended as the last argument (UniFaaS contract). */
  readonly command: readonly string[] | undefined;
  /** Absolute path of a fetch-style handler (`.js`/`.ts`), instead of a command. */
  readonly handler: string | undefined;
  readonly env: Readonly<Record<string, string>>;
  /** `unix`: serve HTTP on the socket in FENNEC_SOCKET; `tcp`: on 127.0.0.1:$PORT. */
  readonly transport: "unix" | "tcp";
  readonly memoryMiB: number;
  /** Inside bubblewrap namespaces with cgroup memory and pids limits. */
  readonly isolate: boolean;
  readonly pids: number;
}

export interface OciSandboxConfig {
  readonly kind: "oci";
  readonly command: readonly string[] | undefined;
  /** Absolute path of a fetch-style handler, instead of a command. */
  readonly handler: string | undefined;
  readonly runtime: "runc" | "runsc";
  readonly env: Readonly<Record<string, string>>;
  readonly memoryMiB: number;
  readonly pids: number;
  /** A handler's built root: shared read-only by every instance, or an overlay per instance. */
  readonly rootfs: "shared" | "overlay";
  /** The command serves HTTP on this port in its own network namespace, reached through a relay. */
  readonly port?: number | undefined;
}

export type SandboxConfig =
  WasmSandboxConfig | VmSandboxConfig | ContainerSandboxConfig | ProcessSandboxConfig | OciSandboxConfig;

export interface FunctionConfig {
  readonly id: FunctionId;
  /** `user/name`. */
  readonly key: string;
  /** Absolute path of the function directory. */
  readonly dir: string;
  /**
   * function.toml as messages name it: relative to the registry (`hello/function.toml`,
   * `@alice/fn/function.toml`), so no error shown to a caller carries an absolute host path.
   */
  readonly file: string;
  readonly keepaliveMs: number;
  readonly concurrentRequests: number;
  readonly singleUse: boolean;
  readonly timeoutMs: number;
  readonly minInstances: number;
  readonly maxInstances: number;
  readonly maxQueue: number;
  readonly queueTimeoutMs: number;
  /**
   * Whether the caller's `Authorization`, `Proxy-Authorization` and `Cookie` headers reach the
   * function; off unless its function.toml opts in, so the admin token a client sends, or a
   * browser's cookies for this host, are never handed to function code by default.
   */
  readonly forwardCredentials: boolean;
  readonly sandbox: SandboxConfig;
  /** A fingerprint of the file's content: instances started from older settings are recycled. */
  readonly revision: string;
}
