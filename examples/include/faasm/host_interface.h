/*
 * Faasm's host interface as Fennec's wasm sandbox provides it: the env.__faasm_* imports,
 * declared from the signatures of faasm/cpp's libfaasm/faasm/host_interface.h (written for
 * Fennec, not copied). On wasm32, long and pointers are 32 bits: every argument is an i32.
 * docs/faasm.md lists which calls Fennec runs and how they differ from Faasm's.
 */
#ifndef FENNEC_FAASM_HOST_INTERFACE_H
#define FENNEC_FAASM_HOST_INTERFACE_H

#ifdef __cplusplus
extern "C" {
#endif

#define FAASM_IMPORT(name) __attribute__((import_module("env"), import_name(#name)))

/* Input and output: the request body and the response body. */
FAASM_IMPORT(__faasm_read_input) long __faasm_read_input(unsigned char* buffer, long bufferLen);
FAASM_IMPORT(__faasm_write_output) void __faasm_write_output(const char* output, long outputLen);

/* Chaining: a call of another function of the same user; its id is this call's to await. */
FAASM_IMPORT(__faasm_chain_name)
unsigned int __faasm_chain_name(const char* name, const unsigned char* inputData, long inputDataSize);
FAASM_IMPORT(__faasm_chain_ptr)
unsigned int __faasm_chain_ptr(int (*funcPtr)(), const unsigned char* inputData, long inputDataSize);
FAASM_IMPORT(__faasm_await_call) int __faasm_await_call(unsigned int messageId);
FAASM_IMPORT(__faasm_await_call_output)
int __faasm_await_call_output(unsigned int messageId, char** output, int* outputLen);

/* State: the user's key-value store. */
FAASM_IMPORT(__faasm_read_state) long __faasm_read_state(const char* key, unsigned char* buffer, long bufferLen);
FAASM_IMPORT(__faasm_read_state_ptr) unsigned char* __faasm_read_state_ptr(const char* key, long totalLen);
FAASM_IMPORT(__faasm_write_state) void __faasm_write_state(const char* key, const unsigned char* data, long dataLen);
FAASM_IMPORT(__faasm_append_state)
void __faasm_append_state(const char* key, const unsigned char* data, long dataLen);
FAASM_IMPORT(__faasm_read_appended_state)
void __faasm_read_appended_state(const char* key, unsigned char* data, long dataLen, long nElems);
FAASM_IMPORT(__faasm_clear_appended_state) void __faasm_clear_appended_state(const char* key);
FAASM_IMPORT(__faasm_write_state_offset)
void __faasm_write_state_offset(const char* key, long totalLen, long offset, const unsigned char* data, long dataLen);
FAASM_IMPORT(__faasm_write_state_from_file)
unsigned int __faasm_write_state_from_file(const char* key, const char* filePath);
FAASM_IMPORT(__faasm_read_state_offset)
void __faasm_read_state_offset(const char* key, long totalLen, long offset, unsigned char* buffer, long bufferLen);
FAASM_IMPORT(__faasm_flag_state_dirty) void __faasm_flag_state_dirty(const char* key, long totalLen);
FAASM_IMPORT(__faasm_flag_state_offset_dirty)
void __faasm_flag_state_offset_dirty(const char* key, long totalLen, long offset, long dataLen);
FAASM_IMPORT(__faasm_read_state_offset_ptr)
unsigned char* __faasm_read_state_offset_ptr(const char* key, long totalLen, long offset, long len);
FAASM_IMPORT(__faasm_push_state) void __faasm_push_state(const char* key);
FAASM_IMPORT(__faasm_push_state_partial) void __faasm_push_state_partial(const char* key);
FAASM_IMPORT(__faasm_push_state_partial_mask) void __faasm_push_state_partial_mask(const char* key, const char* maskKey);
FAASM_IMPORT(__faasm_pull_state) void __faasm_pull_state(const char* key, long stateLen);
FAASM_IMPORT(__faasm_lock_state_read) void __faasm_lock_state_read(const char* key);
FAASM_IMPORT(__faasm_unlock_state_read) void __faasm_unlock_state_read(const char* key);
FAASM_IMPORT(__faasm_lock_state_write) void __faasm_lock_state_write(const char* key);
FAASM_IMPORT(__faasm_unlock_state_write) void __faasm_unlock_state_write(const char* key);

/* The rest of Faasm's header that Fennec declares (see docs/faasm.md for what traps). */
FAASM_IMPORT(__faasm_conf_flag) unsigned int __faasm_conf_flag(const char* key);
FAASM_IMPORT(__faasm_backtrace) void __faasm_backtrace(const int depth);
typedef void (*FaasmMigrateEntryPoint)(int);
FAASM_IMPORT(__faasm_migrate_point) void __faasm_migrate_point(FaasmMigrateEntryPoint f, int arg);

#undef FAASM_IMPORT

#ifdef __cplusplus
}
#endif

#endif
