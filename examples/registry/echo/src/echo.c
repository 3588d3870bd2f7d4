// echo: answers with its request body, byte for byte.
// It always writes a header block first, so a body that happens to look like a CGI header
// ("Status: 500", say) is never mistaken for one.
#include <stdio.h>
#include <stdlib.h>

int main(void) {
  const char *type = getenv("CONTENT_TYPE");
  printf("Content-Type: %s\n\n", type && *type ? type : "application/octet-stream");
  char buf[16384];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) fwrite(buf, 1, n, stdout);
  return 0;
}
