// hello: the smallest useful function. `?name=ann` personalises the greeting.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
  const char *query = getenv("QUERY_STRING");
  const char *name = query ? strstr(query, "name=") : NULL;
  // Only a parameter named exactly `name` counts: skip matches inside `nickname=` and the like.
  while (name && name != query && name[-1] != '&') name = strstr(name + 1, "name=");
  printf("Content-Type: text/plain\n\nHello from Fennec (WebAssembly)!");
  if (name) {
    name += strlen("name=");
    int len = (int)strcspn(name, "&"); // the value ends at the next parameter
    if (len > 0) printf(", %.*s", len, name);
  }
  printf("\n");
  return 0;
}
