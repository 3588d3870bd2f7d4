/* hello-unikernel: a function linked with Fennec's unikernel (guest/unikernel/) into hello.elf.
 *   GET /          a greeting
 *   /fib?n=30      fib(30) = 832040, computed recursively (CPU-bound)
 *   /echo          the request body back
 */
#include <fennec.h>

static unsigned long long fib(int n) { return n < 2 ? (unsigned long long)n : fib(n - 1) + fib(n - 2); }

void fn_handle(const struct fn_request *req, struct fn_response *res) {
  if (!strcmp(req->path, "/fib")) {
    long long n = fn_query_int(req, "n", 25);
    if (n < 0 || n > 90) {
      fn_status(res, 400);
      fn_puts(res, "n must be between 0 and 90\n");
      return;
    }
    fn_printf(res, "fib(%lld) = %llu\n", n, fib((int)n));
    return;
  }
  if (!strcmp(req->path, "/echo")) {
    const char *type = fn_header(req, "content-type");
    if (type) fn_add_header(res, "content-type", type);
    fn_write(res, req->body, req->body_len);
    return;
  }
  if (!strcmp(req->path, "/")) {
    fn_add_header(res, "content-type", "text/plain; charset=utf-8");
    fn_puts(res, "Hello from a Fennec unikernel!\n");
    return;
  }
  fn_status(res, 404);
  fn_printf(res, "no route for %s %s\n", req->method, req->path);
}
