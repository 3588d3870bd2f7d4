// faasm-fanout: a Faasm-style function (built against Faasm's host interface, not WAGI) that fans
// out. Called with N (1-16, default 4) it chains N calls of itself with "square:i", awaits each
// one's output and answers with their sum; a child answers with i*i. It also counts its runs in
// the user's state under a write lock.
//   curl -d 5 127.0.0.1:8123/f/default/faasm-fanout   ->  sum of squares 1..5 = 55 (...)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faasm/core.h"

#define MAX_CHILDREN 16

static char out[1024];

static void answer(const char* text) { faasmSetOutput(text, (long)strlen(text)); }

int main(void) {
  long size = faasmGetInputSize();
  char* input = calloc((size_t)size + 1, 1);
  faasmGetInput((uint8_t*)input, size);

  if (strncmp(input, "square:", 7) == 0) {
    long i = atol(input + 7);
    snprintf(out, sizeof out, "%ld", i * i);
    answer(out);
    return 0;
  }

  long n = size > 0 ? atol(input) : 4;
  if (n < 1 || n > MAX_CHILDREN) {
    snprintf(out, sizeof out, "expected a number of children from 1 to %d", MAX_CHILDREN);
    answer(out);
    return 1;
  }

  unsigned int ids[MAX_CHILDREN];
  for (long i = 0; i < n; i++) {
    char arg[32];
    int len = snprintf(arg, sizeof arg, "square:%ld", i + 1);
    ids[i] = faasmChainNamed("faasm-fanout", (const uint8_t*)arg, len);
  }

  long sum = 0;
  int at = 0;
  char parts[512] = {0};
  for (long i = 0; i < n; i++) {
    char* output = NULL;
    int outputLen = 0;
    if (faasmAwaitCallOutput(ids[i], &output, &outputLen) != 0) {
      snprintf(out, sizeof out, "child %ld failed", i + 1);
      answer(out);
      return 1;
    }
    char value[32] = {0};
    memcpy(value, output, outputLen < 31 ? (size_t)outputLen : 31);
    sum += atol(value);
    at += snprintf(parts + at, sizeof parts - (size_t)at, "%s%s", i ? "+" : "", value);
  }

  // The run counter: read, increment and write back under the key's write lock.
  unsigned int runs = 0;
  __faasm_lock_state_write("fanout-runs");
  faasmReadState("fanout-runs", (uint8_t*)&runs, sizeof runs);
  runs++;
  faasmWriteState("fanout-runs", (const uint8_t*)&runs, sizeof runs);
  __faasm_unlock_state_write("fanout-runs");

  snprintf(out, sizeof out, "sum of squares 1..%ld = %ld (%s; run #%u)\n", n, sum, parts, runs);
  answer(out);
  return 0;
}
