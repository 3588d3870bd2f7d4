// hello: the smallest useful function. `?name=ann` personalises the greeting.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
  const char *query = getenv("QUERY_STRING");
  const char *name = query ? strstr(query, "name=") : NULL;
  printf("Content-Type: text/plain\n\nHello from Fennec (WebAssembly)!");
  if (name && (name == query || name[-1] == '&')) {
    name += strlen("name=");
    printf(", %.*s", (int)strcspn(name, "&"), name);
  }
  printf("\n");
  return 0;
}
