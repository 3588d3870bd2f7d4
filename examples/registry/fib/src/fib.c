// fib: a CPU-bound function (naive recursion), like the seeds' benchmark `/fib?n=`.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long fib(int n) { return n < 2 ? (unsigned long long)n : fib(n - 1) + fib(n - 2); }

int main(void) {
  const char *query = getenv("QUERY_STRING");
  const char *arg = query ? strstr(query, "n=") : NULL;
  int n = arg ? atoi(arg + 2) : 25;
  if (n < 0) n = 0;
  if (n > 45) n = 45;
  printf("Content-Type: text/plain\n\nfib(%d) = %llu\n", n, fib(n));
  return 0;
}
