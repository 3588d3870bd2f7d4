import { Fd, wasi } from "@bjorn3/browser_wasi_shim";
import type { Ring } from "./ring.js";

/**
 * A module's stdin while the request body is still arriving: the bytes already at hand, then
 * whatever the main thread feeds into the executor's stdin ring. A read of an empty ring blocks
 * the guest until more of the body comes or it ends (then reads return nothing: end of file).
 * It is a character device, like a pipe: no seeking, no size.
 */
export class StreamingStdin extends Fd {
  #head: Uint8Array;
  readonly #ring: Ring;

  constructor(head: Uint8Array, ring: Ring) {
    super();
    this.#head = head;
    this.#ring = ring;
  }

  override fd_read(size: number): { ret: number; data: Uint8Array } {
    if (this.#head.byteLength > 0) {
      const data = this.#head.subarray(0, size);
      this.#head = this.#head.subarray(data.byteLength);
      return { ret: wasi.ERRNO_SUCCESS, data };
    }
    return { ret: wasi.ERRNO_SUCCESS, data: this.#ring.readSome(size) };
  }

  override fd_fdstat_get(): { ret: number; fdstat: wasi.Fdstat | null } {
    const fdstat = new wasi.Fdstat(wasi.FILETYPE_CHARACTER_DEVICE, 0);
    fdstat.fs_rights_base = BigInt(wasi.RIGHTS_FD_READ);
    return { ret: wasi.ERRNO_SUCCESS, fdstat };
  }
}
