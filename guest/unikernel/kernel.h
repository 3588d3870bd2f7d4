/* Internal interfaces of the Fennec unikernel (not for functions: see include/fennec.h). */
#ifndef FENNEC_KERNEL_H
#define FENNEC_KERNEL_H

#include "fennec.h"

#define KiB 1024UL
#define MiB (1024UL * 1024UL)

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) {
  uint8_t v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
#define barrier() __asm__ volatile("" ::: "memory")

/* kernel.c */
_Noreturn void panic(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void klog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The receive ring, filled by the UART interrupt. Returns the number of bytes copied. */
size_t rx_read(void *buf, size_t max);
void rx_wait(void); /* sleeps (hlt) until there is something to read */
void tx_bytes(const void *p, size_t n);

/* lib.c: formatting core; emit is called with chunks. */
typedef void (*emit_fn)(void *ctx, const char *s, size_t n);
void fmt_core(emit_fn emit, void *ctx, const char *fmt, va_list ap);

/* mem.c */
void mem_init(uintptr_t lo, uintptr_t hi);
void mem_seal_init(void); /* ends fn_init: splits what is left into the stream heap and the arena */
void arena_reset(void);
void *arena_alloc(size_t n);
void *arena_extend(void *p, size_t old, size_t want); /* grow in place or move; NULL if no room */
void *heap_alloc(size_t n);
void heap_free(void *p);
size_t mem_body_limit(void);
void mem_describe(char *buf, size_t n);

/* chan.c */
void chan_frame(uint8_t type, uint32_t stream, const void *a, size_t alen, const void *b, size_t blen);
void chan_log(const char *text, size_t n);
void chan_pad_partial_frame(void); /* panic: finish a half-written frame with zeros */
_Noreturn void chan_serve(void);

enum { F_READY = 1, F_OPEN = 2, F_DATA = 3, F_EOF = 4, F_CLOSE = 5, F_LOG = 6, F_PING = 7, F_PONG = 8 };
#define FRAME_MAX 65536u

/* http.c */
struct http_out {
  const char *head;
  size_t head_len;
  const char *body;
  size_t body_len;
  int close;
};
/* Parses one request at buf[0..len). Returns 0 when more bytes are needed, >0 (bytes consumed)
 * when a request was served into *out, <0 for an error answer (-status) written into *out. */
long http_serve_one(const char *buf, size_t len, struct http_out *out);
size_t http_error(int status, const char *why, struct http_out *out);
#define HTTP_HEADER_LIMIT (16 * KiB)

#endif
