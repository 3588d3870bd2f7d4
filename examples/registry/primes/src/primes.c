// primes: answers "the k-th prime" from a table of the first 100,000 primes. Building the table
// (trial division) is the expensive part, so it happens in `wizer.initialize`: Fennec runs that
// once when the function is prepared and starts every call from the initialised memory (a
// pre-initialised snapshot, the convention of Wizer and Faasm's proto-Faaslets). Run without a
// snapshot (`[wasm] pre-initialise = false`, or another runtime), `main` builds the table itself,
// so the module answers the same either way.
//
// The request body (or `?k=`) is k, 1-based. Headers say how the answer was reached:
// `X-Table: snapshot` (built before this call) or `built-in-call`; `X-Initialised: <n>` (times the
// table was built in this memory: 1 both ways); `X-Calls: <n>` (calls this memory has served:
// always 1, since every call starts from a fresh copy). `?poison=1` overwrites the table after
// answering, so a test can see that the next call does not inherit it.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COUNT 100000

static unsigned int table[COUNT];
static int initialised;
static int calls;

// Must not read the environment or stdin: in a snapshot they are the initialiser's, not a call's.
static void build(void) {
  unsigned int n = 0;
  for (unsigned int candidate = 2; n < COUNT; candidate++) {
    int prime = 1;
    for (unsigned int i = 0; i < n && table[i] * table[i] <= candidate; i++) {
      if (candidate % table[i] == 0) {
        prime = 0;
        break;
      }
    }
    if (prime) table[n++] = candidate;
  }
  initialised++;
}

__attribute__((export_name("wizer.initialize"))) void initialize(void) { build(); }

static long parameter(const char *query, const char *key) {
  size_t len = strlen(key);
  for (const char *p = query; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL) {
    if (strncmp(p, key, len) == 0 && p[len] == '=') return strtol(p + len + 1, NULL, 10);
  }
  return -1;
}

int main(void) {
  calls++;
  const char *table_from = "snapshot";
  if (!initialised) {
    build();
    table_from = "built-in-call";
  }
  const char *query = getenv("QUERY_STRING");
  char body[32] = {0};
  size_t got = fread(body, 1, sizeof body - 1, stdin);
  body[got] = 0;
  long k = got > 0 ? strtol(body, NULL, 10) : parameter(query, "k");
  if (k < 1 || k > COUNT) {
    printf("Status: 400\nContent-Type: text/plain\n\nk must be between 1 and %d\n", COUNT);
    return 0;
  }
  printf("Content-Type: text/plain\nX-Table: %s\nX-Initialised: %d\nX-Calls: %d\n\n%u\n", table_from,
         initialised, calls, table[k - 1]);
  if (parameter(query, "poison") == 1) memset(table, 0, sizeof table);
  return 0;
}
