// Run by every new wasm worker before it takes a real module, so the first real invocation finds
// the WASI shim's JavaScript and V8's import wrappers already compiled in that thread. It makes the
// calls every WAGI program makes (environment, stdin, stdout) and nothing else.
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(void) {
  const char *method = getenv("REQUEST_METHOD");
  char buf[256];
  ssize_t n;
  while ((n = read(0, buf, sizeof buf)) > 0) write(1, buf, (size_t)n);
  write(1, method ? method : "", method ? strlen(method) : 0);
  return 0;
}
