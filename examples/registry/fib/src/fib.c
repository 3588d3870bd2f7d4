// fib: a CPU-bound function (naive recursion), like the seeds' benchmark `/fib?n=`.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long fib(int n) { return n < 2 ? (unsigned long long)n : fib(n - 1) + fib(n - 2); }

int main(void) {
  const char *query = getenv("QUERY_STRING");
  const char *arg = query ? strstr(query, "n=") : NULL;
  // Only a parameter named exactly `n` counts: `?fn=3` or `?min=3` do not.
  while (arg && arg != query && arg[-1] != '&') arg = strstr(arg + 1, "n=");
  // strtol rather than atoi: an out-of-range number saturates instead of being undefined.
  long n = arg ? strtol(arg + 2, NULL, 10) : 25;
  if (n < 0) n = 0;
  if (n > 45) n = 45;
  printf("Content-Type: text/plain\n\nfib(%ld) = %llu\n", n, fib((int)n));
  return 0;
}
