// faasm-chain: a Faasm-style function that calls itself in a chain. Called with N (1-16, default
// 3), it chains itself with N-1, awaits that call and answers with its answer after its own
// number, so one call makes a chain of N calls:
//   curl -d 3 127.0.0.1:8123/f/default/faasm-chain   ->  3 2 1
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faasm/core.h"

static char out[256];

int main(void) {
  long size = faasmGetInputSize();
  char input[16] = {0};
  faasmGetInput((uint8_t*)input, size < 15 ? size : 15);
  long n = size > 0 ? atol(input) : 3;
  if (n < 1 || n > 16) {
    const char* refusal = "expected a chain length from 1 to 16\n";
    faasmSetOutput(refusal, (long)strlen(refusal));
    return 1;
  }
  if (n == 1) {
    faasmSetOutput("1\n", 2);
    return 0;
  }
  char next[16];
  int len = snprintf(next, sizeof next, "%ld", n - 1);
  unsigned int id = faasmChainNamed("faasm-chain", (const uint8_t*)next, len);
  char* rest = NULL;
  int restLen = 0;
  if (faasmAwaitCallOutput(id, &rest, &restLen) != 0) return 1;
  int at = snprintf(out, sizeof out, "%ld %.*s", n, restLen, rest);
  faasmSetOutput(out, at);
  return 0;
}
