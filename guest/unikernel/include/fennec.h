/*
 * fennec.h — the API between a function and Fennec's unikernel (guest/unikernel/).
 *
 * A function is one C file linked with the kernel into one bootable ELF image. It defines
 *
 *   void fn_handle(const struct fn_request *req, struct fn_response *res);   (required)
 *   void fn_init(const char *cmdline);                                        (optional)
 *
 * fn_init runs once at boot, before the kernel tells Fennec it is ready; it gets the `[vm]
 * cmdline` of function.toml. fn_handle runs once per HTTP request, one request at a time. The
 * response starts as 200 with no headers and an empty body.
 *
 * Memory: fn_alloc() hands out memory from an arena. Allocations made in fn_init live for
 * ever; allocations made in fn_handle (and the request itself, and the response) are released
 * when the response has been sent. There is no free(). Static variables keep their values
 * from one request to the next.
 *
 * Failure: any CPU exception (divide by zero, page fault: address 0 is unmapped, stack
 * overflow: a guard page) or fn_panic() writes "panic: ..." to Fennec's log and stops the VM.
 *
 * The environment is freestanding: no libc beyond the few functions declared below, no
 * threads, no clock, no files, no network. Floating point (SSE2) may be used in function code.
 */
#ifndef FENNEC_H
#define FENNEC_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct fn_header {
  const char *name;  /* as the client sent it; compare case-insensitively */
  const char *value; /* without surrounding whitespace */
};

struct fn_request {
  const char *method; /* "GET", "POST", ... */
  const char *path;   /* the request target before '?', not percent-decoded: "/a/b" */
  const char *query;  /* after '?', not decoded, "" when there is none: "x=1&y=2" */
  const struct fn_header *headers;
  size_t num_headers;
  const char *body; /* body_len bytes, followed by a NUL that is not part of the body */
  size_t body_len;
};

struct fn_response; /* opaque: use the functions below */

/* The function. */
void fn_handle(const struct fn_request *req, struct fn_response *res);
void fn_init(const char *cmdline); /* optional */

/* Request helpers. */
/* The value of the first header called `name` (any case), or NULL. */
const char *fn_header(const struct fn_request *req, const char *name);
/* The percent-decoded value of query parameter `key` ("+" is a space), or NULL when absent. The
 * string lives until the response is sent. */
const char *fn_query(const struct fn_request *req, const char *key);
/* Query parameter `key` as a decimal integer, or `dflt` when absent or not a number. */
long long fn_query_int(const struct fn_request *req, const char *key, long long dflt);

/* Response helpers. */
void fn_status(struct fn_response *res, int status);
/* Adds a header (names and values are copied; CR, LF and NUL are refused: returns -1).
 * content-length, transfer-encoding and connection are the kernel's and are ignored. */
int fn_add_header(struct fn_response *res, const char *name, const char *value);
void fn_write(struct fn_response *res, const void *data, size_t len);
void fn_puts(struct fn_response *res, const char *s); /* no newline added */
/* printf into the body: %d %i %u %x %X %c %s %p %% with l/ll/z sizes, width, '-' and '0'
 * flags and %.Ns / %.*s precision. No floating point conversions. */
void fn_printf(struct fn_response *res, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Environment. */
void *fn_alloc(size_t size); /* 16-byte aligned; NULL when the arena is exhausted */
void fn_log(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* to Fennec's log */
_Noreturn void fn_panic(const char *msg);
int fn_snprintf(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int fn_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);

/* The freestanding libc subset the kernel provides. */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
int strcasecmp(const char *a, const char *b);
char *strchr(const char *s, int c);

#ifdef __cplusplus
}
#endif
#endif
