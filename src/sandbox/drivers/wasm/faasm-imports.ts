/**
 * Faasm's host interface (`env.__faasm_*`, as faasm/cpp's `host_interface.h` declares it) for a
 * module on an executor thread. Signatures follow the header on wasm32: pointers, `long` and
 * `int` are i32. What needs the rest of Fennec (chaining, awaiting, state) is a blocking host
 * call to the main thread (host-channel.ts), served through the call's CallHost
 * (faasm-host.ts); docs/faasm.md says how each call behaves and which trap as unsupported.
 */
import { FAASM_IMPORT_MODULE, SUPPORTED_FAASM_CALLS, UNSUPPORTED_FAASM_CALLS } from "./faasm-names.js";
import { HostCallFailure, type HostChannelClient } from "./host-channel.js";

/** One run's input and output; the imports are made once per prepared copy, a run fills this in. */
export interface FaasmRun {
  input: Uint8Array;
  /** What `__faasm_write_output` set last (Faasm keeps the last output written). */
  output: Uint8Array | undefined;
  maxOutputBytes: number;
  /** State mapped into linear memory by the `_ptr` reads: key -> where and how long. */
  readonly mapped: Map<string, { ptr: number; len: number }>;
}

export function faasmRun(): FaasmRun {
  return { input: new Uint8Array(0), output: undefined, maxOutputBytes: 0, mapped: new Map() };
}

const decoder = new TextDecoder("utf-8", { fatal: false });
/** Longest C string read from the guest (a key, a function name): a runaway pointer stops here. */
const MAX_CSTRING = 4096;

/**
 * The `env` imports of a Faasm function. `memoryOf` and `exportsOf` reach the instance once it
 * exists (the imports are made before it).
 */
export function faasmImports(
  run: FaasmRun,
  host: HostChannelClient,
  memoryOf: () => WebAssembly.Memory,
  exportsOf: () => WebAssembly.Exports,
): WebAssembly.Imports {
  const bytes = () => new Uint8Array(memoryOf().buffer);
  const check = (ptr: number, len: number, what: string): void => {
    if (len < 0 || ptr < 0 || ptr + len > memoryOf().buffer.byteLength)
      throw new HostCallFailure("FN_TRAP", `${what}: ${len} bytes at ${ptr} are outside linear memory`);
  };
  /** A copy of guest bytes (the memory may grow, or the guest change them, after the call). */
  const read = (ptr: number, len: number, what: string): Uint8Array => {
    check(ptr, len, what);
    return bytes().slice(ptr, ptr + len);
  };
  const write = (ptr: number, data: Uint8Array, what: string): void => {
    check(ptr, data.byteLength, what);
    bytes().set(data, ptr);
  };
  const cstring = (ptr: number, what: string): string => {
    const mem = bytes();
    const end = mem.indexOf(0, ptr);
    if (ptr <= 0 || end < 0 || end - ptr > MAX_CSTRING)
      throw new HostCallFailure("FN_TRAP", `${what}: not a C string of at most ${MAX_CSTRING} bytes`);
    return decoder.decode(mem.subarray(ptr, end));
  };
  /**
   * Room for `len` bytes in the guest: its own `malloc` when it exports one, else fresh pages
   * grown at the end of memory (as Faasm maps state), which libc's allocator never hands out
   * since it grows memory itself for what it needs. Past the memory cap this throws (FN_OOM).
   */
  const allocate = (len: number): number => {
    const malloc = exportsOf()["malloc"];
    if (typeof malloc === "function") {
      const ptr = (malloc as (n: number) => number)(len);
      if (ptr !== 0) return ptr;
    }
    const pages = Math.max(1, Math.ceil(len / 65536));
    return memoryOf().grow(pages) * 65536;
  };
  const stateGet = (key: string): Uint8Array =>
    host.call({ op: "state-get", key }).bytes ?? new Uint8Array(0);
  /** Maps a key's value into memory (at least `totalLen` bytes, zero-filled past the value). */
  const mapState = (key: string, totalLen: number): { ptr: number; len: number } => {
    const existing = run.mapped.get(key);
    if (existing && existing.len >= totalLen) return existing;
    const value = stateGet(key);
    const len = Math.max(totalLen, value.byteLength);
    const ptr = allocate(len);
    const mem = bytes();
    mem.fill(0, ptr, ptr + len);
    mem.set(value, ptr);
    const mapping = { ptr, len };
    run.mapped.set(key, mapping);
    return mapping;
  };
  /** A write through the host also lands in the mapped copy, so the two never disagree. */
  const updateMapped = (key: string, offset: number, data: Uint8Array): void => {
    const m = run.mapped.get(key);
    if (!m || offset >= m.len) return;
    bytes().set(data.subarray(0, m.len - offset), m.ptr + offset);
  };
  const push = (key: string): void => {
    const m = run.mapped.get(key);
    if (m) host.call({ op: "state-set", key, value: read(m.ptr, m.len, "__faasm_push_state") });
  };

  const calls: Record<string, (...args: number[]) => number | void> = {
    __faasm_read_input(buf, len) {
      if (len === 0) return run.input.byteLength;
      const n = Math.min(len, run.input.byteLength);
      write(buf, run.input.subarray(0, n), "__faasm_read_input");
      return n;
    },
    __faasm_write_output(ptr, len) {
      if (len > run.maxOutputBytes)
        throw new HostCallFailure(
          "FN_RESPONSE_TOO_LARGE",
          `wrote an output of ${len} bytes, larger than its limit of ${run.maxOutputBytes} bytes`,
        );
      run.output = read(ptr, len, "__faasm_write_output");
    },
    __faasm_chain_name(namePtr, inPtr, inLen) {
      const name = cstring(namePtr, "__faasm_chain_name");
      return host.call({ op: "chain", name, input: read(inPtr, inLen, "__faasm_chain_name") }).value!;
    },
    __faasm_await_call(id) {
      return host.call({ op: "await", id, output: false }).value!;
    },
    __faasm_await_call_output(id, outPtrPtr, outLenPtr) {
      const reply = host.call({ op: "await", id, output: true });
      const output = reply.bytes ?? new Uint8Array(0);
      // An empty output takes no memory: a NULL pointer and a length of 0.
      const ptr = output.byteLength > 0 ? allocate(output.byteLength) : 0;
      if (ptr !== 0) write(ptr, output, "__faasm_await_call_output");
      const view = new DataView(memoryOf().buffer);
      check(outPtrPtr, 4, "__faasm_await_call_output");
      check(outLenPtr, 4, "__faasm_await_call_output");
      view.setUint32(outPtrPtr, ptr, true);
      view.setInt32(outLenPtr, output.byteLength, true);
      return reply.value!;
    },
    __faasm_read_state(keyPtr, buf, len) {
      const value = stateGet(cstring(keyPtr, "__faasm_read_state"));
      if (len > 0) write(buf, value.subarray(0, Math.min(len, value.byteLength)), "__faasm_read_state");
      return value.byteLength;
    },
    __faasm_read_state_ptr(keyPtr, totalLen) {
      return mapState(cstring(keyPtr, "__faasm_read_state_ptr"), totalLen).ptr;
    },
    __faasm_read_state_offset(keyPtr, _totalLen, offset, buf, len) {
      const value = stateGet(cstring(keyPtr, "__faasm_read_state_offset"));
      const out = new Uint8Array(Math.max(0, len));
      out.set(value.subarray(offset, offset + len));
      write(buf, out, "__faasm_read_state_offset");
    },
    __faasm_read_state_offset_ptr(keyPtr, totalLen, offset, len) {
      const key = cstring(keyPtr, "__faasm_read_state_offset_ptr");
      return mapState(key, Math.max(totalLen, offset + len)).ptr + offset;
    },
    __faasm_write_state(keyPtr, data, len) {
      const key = cstring(keyPtr, "__faasm_write_state");
      const value = read(data, len, "__faasm_write_state");
      host.call({ op: "state-set", key, value });
      updateMapped(key, 0, value);
    },
    __faasm_write_state_offset(keyPtr, _totalLen, offset, data, len) {
      const key = cstring(keyPtr, "__faasm_write_state_offset");
      const value = read(data, len, "__faasm_write_state_offset");
      host.call({ op: "state-write", key, offset, value });
      updateMapped(key, offset, value);
    },
    __faasm_append_state(keyPtr, data, len) {
      const key = cstring(keyPtr, "__faasm_append_state");
      host.call({ op: "state-append", key, value: read(data, len, "__faasm_append_state") });
    },
    __faasm_read_appended_state(keyPtr, buf, bufLen, nElems) {
      const key = cstring(keyPtr, "__faasm_read_appended_state");
      const list = host.call({ op: "state-appended", key }).list ?? [];
      const out = new Uint8Array(Math.max(0, bufLen));
      let at = 0;
      for (const element of list.slice(0, Math.max(0, nElems))) {
        if (at >= out.byteLength) break;
        out.set(element.subarray(0, out.byteLength - at), at);
        at += element.byteLength;
      }
      write(buf, out, "__faasm_read_appended_state");
    },
    __faasm_clear_appended_state(keyPtr) {
      host.call({ op: "state-clear-appended", key: cstring(keyPtr, "__faasm_clear_appended_state") });
    },
    // Dirty flags: a push writes the whole mapped copy, so there is nothing to track.
    __faasm_flag_state_dirty() {},
    __faasm_flag_state_offset_dirty() {},
    __faasm_push_state(keyPtr) {
      push(cstring(keyPtr, "__faasm_push_state"));
    },
    __faasm_push_state_partial(keyPtr) {
      push(cstring(keyPtr, "__faasm_push_state_partial"));
    },
    __faasm_push_state_partial_mask(keyPtr) {
      push(cstring(keyPtr, "__faasm_push_state_partial_mask"));
    },
    __faasm_pull_state(keyPtr) {
      const key = cstring(keyPtr, "__faasm_pull_state");
      const m = run.mapped.get(key);
      if (!m) return;
      const value = stateGet(key);
      const mem = bytes();
      mem.fill(0, m.ptr, m.ptr + m.len);
      mem.set(value.subarray(0, m.len), m.ptr);
    },
    __faasm_lock_state_read(keyPtr) {
      host.call({
        op: "lock",
        key: cstring(keyPtr, "__faasm_lock_state_read"),
        mode: "read",
        release: false,
      });
    },
    __faasm_unlock_state_read(keyPtr) {
      host.call({
        op: "lock",
        key: cstring(keyPtr, "__faasm_unlock_state_read"),
        mode: "read",
        release: true,
      });
    },
    __faasm_lock_state_write(keyPtr) {
      host.call({
        op: "lock",
        key: cstring(keyPtr, "__faasm_lock_state_write"),
        mode: "write",
        release: false,
      });
    },
    __faasm_unlock_state_write(keyPtr) {
      host.call({
        op: "lock",
        key: cstring(keyPtr, "__faasm_unlock_state_write"),
        mode: "write",
        release: true,
      });
    },
    // No configuration flags are set on Fennec.
    __faasm_conf_flag() {
      return 0;
    },
    __faasm_backtrace() {},
    // One node never migrates a call: the function carries on where it is.
    __faasm_migrate_point() {},
  };

  const env: Record<string, (...args: number[]) => number | void> = {};
  for (const name of SUPPORTED_FAASM_CALLS) env[name] = calls[name]!;
  for (const [name, why] of UNSUPPORTED_FAASM_CALLS) {
    env[name] = () => {
      throw new HostCallFailure("FN_TRAP", `called ${name}, which Fennec does not support: ${why}`);
    };
  }
  return { [FAASM_IMPORT_MODULE]: env };
}

/**
 * The `env` imports where no call runs (pre-initialising a module's snapshot): every Faasm host
 * call traps, since there is no input, output, chain or state then.
 */
export function unavailableFaasmImports(why: string): WebAssembly.Imports {
  const env: Record<string, () => never> = {};
  for (const name of [...SUPPORTED_FAASM_CALLS, ...UNSUPPORTED_FAASM_CALLS.keys()]) {
    env[name] = () => {
      throw new HostCallFailure("FN_TRAP", `called ${name} ${why}`);
    };
  }
  return { [FAASM_IMPORT_MODULE]: env };
}
