/*
 * The few helpers of Faasm's libfaasm (faasm/core.h) that functions use most, as thin inline
 * wrappers over the host interface, so such a function builds here without libfaasm.
 */
#ifndef FENNEC_FAASM_CORE_H
#define FENNEC_FAASM_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "faasm/host_interface.h"

/* The input's size: the host answers a zero-length read with it. */
static inline long faasmGetInputSize(void) {
  uint8_t none[1];
  return __faasm_read_input(none, 0);
}
static inline void faasmGetInput(uint8_t* buffer, long bufferLen) { __faasm_read_input(buffer, bufferLen); }
static inline void faasmSetOutput(const char* output, long outputLen) { __faasm_write_output(output, outputLen); }
static inline unsigned int faasmChainNamed(const char* name, const uint8_t* input, long inputSize) {
  return __faasm_chain_name(name, input, inputSize);
}
static inline unsigned int faasmAwaitCall(unsigned int callId) { return __faasm_await_call(callId); }
static inline unsigned int faasmAwaitCallOutput(unsigned int callId, char** output, int* outputLen) {
  return __faasm_await_call_output(callId, output, outputLen);
}
static inline size_t faasmReadStateSize(const char* key) { return __faasm_read_state(key, NULL, 0); }
static inline long faasmReadState(const char* key, uint8_t* buffer, long bufferLen) {
  return __faasm_read_state(key, buffer, bufferLen);
}
static inline void faasmWriteState(const char* key, const uint8_t* data, long dataLen) {
  __faasm_write_state(key, data, dataLen);
}
static inline void faasmAppendState(const char* key, const uint8_t* data, long dataLen) {
  __faasm_append_state(key, data, dataLen);
}

#endif
