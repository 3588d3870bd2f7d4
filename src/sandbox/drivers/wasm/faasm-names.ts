/**
 * The host calls of Faasm's interface (`env.__faasm_*`, declared by faasm/cpp's
 * `libfaasm/faasm/host_interface.h`), and which of them Fennec runs. A module importing any of
 * them is a Faasm function (faasm-imports.ts); one importing a name not declared there is refused.
 */

/** The namespace clang gives undefined functions, where Faasm's imports live. */
export const FAASM_IMPORT_MODULE = "env";

/** Declared by Faasm's header and run by Fennec (docs/faasm.md says how each behaves). */
export const SUPPORTED_FAASM_CALLS: ReadonlySet<string> = new Set([
  "__faasm_read_input",
  "__faasm_write_output",
  "__faasm_chain_name",
  "__faasm_await_call",
  "__faasm_await_call_output",
  "__faasm_read_state",
  "__faasm_read_state_ptr",
  "__faasm_write_state",
  "__faasm_append_state",
  "__faasm_read_appended_state",
  "__faasm_clear_appended_state",
  "__faasm_write_state_offset",
  "__faasm_read_state_offset",
  "__faasm_read_state_offset_ptr",
  "__faasm_flag_state_dirty",
  "__faasm_flag_state_offset_dirty",
  "__faasm_push_state",
  "__faasm_push_state_partial",
  "__faasm_push_state_partial_mask",
  "__faasm_pull_state",
  "__faasm_lock_state_read",
  "__faasm_unlock_state_read",
  "__faasm_lock_state_write",
  "__faasm_unlock_state_write",
  "__faasm_conf_flag",
  "__faasm_backtrace",
  "__faasm_migrate_point",
]);

/**
 * Declared by Faasm's header but needing what Fennec lacks: a module may import them (it is
 * accepted, as Faasm's toolchain links them in freely) and traps with the reason if it calls one.
 */
export const UNSUPPORTED_FAASM_CALLS: ReadonlyMap<string, string> = new Map([
  ["__faasm_chain_ptr", "chaining a function pointer needs Faasm's entry-point table; chain by name instead"],
  ["__faasm_write_state_from_file", "the sandbox's files are not the host's"],
  ["__faasm_get_py_user", "Fennec has no Python runtime"],
  ["__faasm_get_py_func", "Fennec has no Python runtime"],
  ["__faasm_get_py_entry", "Fennec has no Python runtime"],
  ["__faasm_chain_py", "Fennec has no Python runtime"],
  ["__faasm_sm_array", "shared-memory OpenMP needs threads, which the wasm sandbox does not run"],
  ["__faasm_sm_raw", "shared-memory OpenMP needs threads, which the wasm sandbox does not run"],
  ["__faasm_sm_reduce", "shared-memory OpenMP needs threads, which the wasm sandbox does not run"],
  ["__faasm_sm_var", "shared-memory OpenMP needs threads, which the wasm sandbox does not run"],
  ["__faasm_sm_critical_local", "shared-memory OpenMP needs threads, which the wasm sandbox does not run"],
  [
    "__faasm_sm_critical_local_end",
    "shared-memory OpenMP needs threads, which the wasm sandbox does not run",
  ],
  ["__faasm_host_interface_test", "it is Faasm's own test hook"],
  ["__faasm_s3_get_num_buckets", "Fennec has no S3 store"],
  ["__faasm_s3_list_buckets", "Fennec has no S3 store"],
  ["__faasm_s3_get_num_keys", "Fennec has no S3 store"],
  ["__faasm_s3_get_num_keys_with_prefix", "Fennec has no S3 store"],
  ["__faasm_s3_list_keys", "Fennec has no S3 store"],
  ["__faasm_s3_list_keys_with_prefix", "Fennec has no S3 store"],
  ["__faasm_s3_add_key_bytes", "Fennec has no S3 store"],
  ["__faasm_s3_get_key_bytes", "Fennec has no S3 store"],
]);

/** Whether an import is one of Faasm's host calls (supported or not). */
export function isFaasmImport(module: string, name: string): boolean {
  return (
    module === FAASM_IMPORT_MODULE && (SUPPORTED_FAASM_CALLS.has(name) || UNSUPPORTED_FAASM_CALLS.has(name))
  );
}
