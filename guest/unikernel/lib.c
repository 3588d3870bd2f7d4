/* Fennec unikernel: the freestanding libc subset and the printf core. */
#include "kernel.h"

void *memcpy(void *dst, const void *src, size_t n) {
  void *d = dst;
  __asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n)::"memory");
  return dst;
}

void *memmove(void *dst, const void *src, size_t n) {
  if ((uintptr_t)dst <= (uintptr_t)src || (uintptr_t)dst >= (uintptr_t)src + n) return memcpy(dst, src, n);
  /* Overlapping with dst above src: copy backwards. */
  void *d = (char *)dst + n - 1;
  const void *s = (const char *)src + n - 1;
  __asm__ volatile("std; rep movsb; cld" : "+D"(d), "+S"(s), "+c"(n)::"memory");
  return dst;
}

void *memset(void *dst, int c, size_t n) {
  void *d = dst;
  __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
  return dst;
}

int memcmp(const void *a, const void *b, size_t n) {
  const unsigned char *x = a, *y = b;
  for (size_t i = 0; i < n; i++)
    if (x[i] != y[i]) return x[i] - y[i];
  return 0;
}

size_t strlen(const char *s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}

int strcmp(const char *a, const char *b) {
  while (*a && *a == *b) a++, b++;
  return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n) {
  for (; n; n--, a++, b++) {
    if (*a != *b) return (unsigned char)*a - (unsigned char)*b;
    if (!*a) return 0;
  }
  return 0;
}

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

int strcasecmp(const char *a, const char *b) {
  while (*a && lower(*a) == lower(*b)) a++, b++;
  return lower((unsigned char)*a) - lower((unsigned char)*b);
}

char *strchr(const char *s, int c) {
  for (;; s++) {
    if (*s == (char)c) return (char *)s;
    if (!*s) return 0;
  }
}

/* printf core: %d %i %u %x %X %c %s %p %% with flags '-' '0', width (or *), precision for %s
 * (or .*), and h/l/ll/z/j/t size modifiers. */
void fmt_core(emit_fn emit, void *ctx, const char *fmt, va_list ap) {
  while (*fmt) {
    const char *start = fmt;
    while (*fmt && *fmt != '%') fmt++;
    if (fmt > start) emit(ctx, start, (size_t)(fmt - start));
    if (!*fmt) break;
    fmt++;
    int left = 0, zero = 0, width = 0, prec = -1, size = 0;
    for (;; fmt++) {
      if (*fmt == '-') left = 1;
      else if (*fmt == '0') zero = 1;
      else if (*fmt == ' ' || *fmt == '+' || *fmt == '#') continue;
      else break;
    }
    if (*fmt == '*') {
      width = va_arg(ap, int);
      if (width < 0) left = 1, width = -width;
      fmt++;
    } else
      while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
    if (*fmt == '.') {
      fmt++;
      prec = 0;
      if (*fmt == '*') {
        prec = va_arg(ap, int);
        fmt++;
      } else
        while (*fmt >= '0' && *fmt <= '9') prec = prec * 10 + (*fmt++ - '0');
    }
    for (;; fmt++) {
      if (*fmt == 'l') size++;
      else if (*fmt == 'z' || *fmt == 'j' || *fmt == 't') size = 2;
      else if (*fmt == 'h') continue;
      else break;
    }
    char tmp[24], *s = tmp + sizeof tmp, *str = 0;
    size_t len = 0;
    int neg = 0;
    char c = *fmt ? *fmt++ : 0;
    switch (c) {
    case 'd':
    case 'i':
    case 'u':
    case 'x':
    case 'X':
    case 'p': {
      unsigned long long v;
      unsigned base = (c == 'x' || c == 'X' || c == 'p') ? 16 : 10;
      if (c == 'p') {
        v = (uintptr_t)va_arg(ap, void *);
      } else if (c == 'd' || c == 'i') {
        long long x = size == 0 ? va_arg(ap, int) : size == 1 ? va_arg(ap, long) : va_arg(ap, long long);
        neg = x < 0;
        v = neg ? 0ULL - (unsigned long long)x : (unsigned long long)x;
      } else
        v = size == 0 ? va_arg(ap, unsigned) : size == 1 ? va_arg(ap, unsigned long) : va_arg(ap, unsigned long long);
      const char *digits = c == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
      do {
        *--s = digits[v % base];
        v /= base;
      } while (v);
      if (c == 'p') *--s = 'x', *--s = '0';
      len = (size_t)(tmp + sizeof tmp - s);
      str = s;
      break;
    }
    case 'c':
      tmp[0] = (char)va_arg(ap, int);
      str = tmp;
      len = 1;
      break;
    case 's':
      str = va_arg(ap, char *);
      if (!str) str = "(null)";
      len = 0;
      while (str[len] && (prec < 0 || len < (size_t)prec)) len++;
      break;
    case '%':
      str = "%";
      len = 1;
      break;
    default: /* unknown conversion: print it as is */
      str = (char *)(fmt - 1);
      len = c ? 1 : 0;
      break;
    }
    size_t total = len + (size_t)neg;
    size_t pad = (size_t)width > total ? (size_t)width - total : 0;
    if (!left && !zero)
      for (; pad; pad--) emit(ctx, " ", 1);
    if (neg) emit(ctx, "-", 1);
    if (!left && zero)
      for (; pad; pad--) emit(ctx, "0", 1);
    emit(ctx, str, len);
    for (; pad; pad--) emit(ctx, " ", 1);
  }
}
