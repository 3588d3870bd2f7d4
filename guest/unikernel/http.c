/*
 * Fennec unikernel: HTTP/1.1 on a stream (docs/guest-channel.md, last section) and the
 * request/response half of the function API (include/fennec.h).
 */
#include "kernel.h"

#define MAX_REQ_HEADERS 100
#define MAX_RES_HEADERS 64

struct fn_response {
  int status;
  size_t nh;
  struct fn_header h[MAX_RES_HEADERS];
  char *body;
  size_t len, cap;
  int close;
};

static struct fn_response response;

static int is_tchar(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 1;
  return c && strchr("!#$%&'*+-.^_`|~", c) != 0;
}

static const char *reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 304: return "Not Modified";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 409: return "Conflict";
  case 413: return "Content Too Large";
  case 422: return "Unprocessable Content";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 505: return "HTTP Version Not Supported";
  default: return "Unknown";
  }
}

static int token_in_list(const char *list, size_t n, const char *tok);

static _Noreturn void oom(const char *what) {
  panic("out of memory: %s does not fit in the request arena", what);
}

static char *arena_strndup(const char *s, size_t n) {
  char *p = arena_alloc(n + 1);
  if (!p) oom("the request");
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

/* ---- response ---- */
void fn_status(struct fn_response *res, int status) {
  if (status < 100 || status > 999) panic("fn_status: %d is not an HTTP status", status);
  res->status = status;
}

static int has_ctl(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 && *s != '\t') return 1;
  return 0;
}

int fn_add_header(struct fn_response *res, const char *name, const char *value) {
  if (!name || !value || !*name || has_ctl(value)) return -1;
  for (const char *p = name; *p; p++)
    if (!is_tchar((unsigned char)*p)) return -1;
  if (!strcasecmp(name, "content-length") || !strcasecmp(name, "transfer-encoding")) return 0;
  if (!strcasecmp(name, "connection")) {
    if (token_in_list(value, strlen(value), "close")) res->close = 1;
    return 0;
  }
  if (res->nh >= MAX_RES_HEADERS) return -1;
  res->h[res->nh].name = arena_strndup(name, strlen(name));
  res->h[res->nh].value = arena_strndup(value, strlen(value));
  res->nh++;
  return 0;
}

void fn_write(struct fn_response *res, const void *data, size_t len) {
  if (!len) return;
  if (res->len + len > res->cap) {
    size_t cap = res->cap ? res->cap : 4 * KiB;
    while (cap < res->len + len) cap *= 2;
    char *b = arena_extend(res->body, res->len, cap);
    if (!b) {
      cap = res->len + len; /* the exact size may still fit */
      b = arena_extend(res->body, res->len, cap);
      if (!b) oom("the response body");
    }
    res->body = b;
    res->cap = cap;
  }
  memcpy(res->body + res->len, data, len);
  res->len += len;
}

void fn_puts(struct fn_response *res, const char *s) { fn_write(res, s, strlen(s)); }

static void res_emit(void *ctx, const char *s, size_t n) { fn_write(ctx, s, n); }

void fn_printf(struct fn_response *res, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fmt_core(res_emit, res, fmt, ap);
  va_end(ap);
}

/* ---- request helpers ---- */
const char *fn_header(const struct fn_request *req, const char *name) {
  for (size_t i = 0; i < req->num_headers; i++)
    if (!strcasecmp(req->headers[i].name, name)) return req->headers[i].value;
  return 0;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

const char *fn_query(const struct fn_request *req, const char *key) {
  size_t klen = strlen(key);
  const char *q = req->query;
  while (*q) {
    const char *end = strchr(q, '&');
    if (!end) end = q + strlen(q);
    const char *eq = q;
    while (eq < end && *eq != '=') eq++;
    if ((size_t)(eq - q) == klen && !memcmp(q, key, klen)) {
      const char *v = eq < end ? eq + 1 : end;
      char *out = arena_alloc((size_t)(end - v) + 1), *o = out;
      if (!out) oom("a query parameter");
      for (; v < end; v++) {
        if (*v == '+') *o++ = ' ';
        else if (*v == '%' && v + 2 < end && hexval(v[1]) >= 0 && hexval(v[2]) >= 0) {
          *o++ = (char)(hexval(v[1]) * 16 + hexval(v[2]));
          v += 2;
        } else
          *o++ = *v;
      }
      *o = 0;
      return out;
    }
    q = *end ? end + 1 : end;
  }
  return 0;
}

long long fn_query_int(const struct fn_request *req, const char *key, long long dflt) {
  const char *v = fn_query(req, key);
  if (!v) return dflt;
  int neg = *v == '-';
  if (neg || *v == '+') v++;
  if (!*v) return dflt;
  unsigned long long n = 0;
  for (; *v; v++) {
    if (*v < '0' || *v > '9' || n > (~0ULL >> 1) / 10) return dflt;
    n = n * 10 + (unsigned)(*v - '0');
  }
  if (n > (~0ULL >> 1)) return dflt;
  return neg ? -(long long)n : (long long)n;
}

/* ---- the wire ---- */
struct sb {
  char *p;
  size_t n, cap;
};
static void sb_emit(void *ctx, const char *s, size_t n) {
  struct sb *b = ctx;
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 512;
    while (cap < b->n + n) cap *= 2;
    char *q = arena_extend(b->p, b->n, cap);
    if (!q) oom("the response head");
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
}
static void sb_printf(struct sb *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fmt_core(sb_emit, b, fmt, ap);
  va_end(ap);
}

static void finish_head(struct sb *b, int status, const struct fn_response *res, size_t body_len, int close) {
  sb_printf(b, "HTTP/1.1 %d %s\r\n", status, reason(status));
  for (size_t i = 0; res && i < res->nh; i++) sb_printf(b, "%s: %s\r\n", res->h[i].name, res->h[i].value);
  if (!(status < 200 || status == 204 || status == 304)) sb_printf(b, "content-length: %zu\r\n", body_len);
  if (close) sb_printf(b, "connection: close\r\n");
  sb_printf(b, "\r\n");
}

size_t http_error(int status, const char *why, struct http_out *out) {
  arena_reset();
  struct sb body = {0}, head = {0};
  sb_printf(&body, "%s\n", why);
  finish_head(&head, status, 0, body.n, 1);
  *out = (struct http_out){head.p, head.n, body.p, body.n, 1};
  return head.n + body.n;
}

static long fail(int status, const char *why, struct http_out *out) {
  http_error(status, why, out);
  return -status;
}

static int token_in_list(const char *list, size_t n, const char *tok) {
  size_t t = strlen(tok);
  for (size_t i = 0; i < n;) {
    while (i < n && (list[i] == ' ' || list[i] == '\t' || list[i] == ',')) i++;
    size_t s = i;
    while (i < n && list[i] != ',' && list[i] != ' ' && list[i] != '\t') i++;
    if (i - s == t) {
      size_t k = 0;
      while (k < t && (list[s + k] | 0x20) == tok[k]) k++;
      if (k == t) return 1;
    }
  }
  return 0;
}

static int name_is(const char *p, size_t n, const char *lower_name) {
  size_t i = 0;
  for (; i < n && lower_name[i]; i++)
    if ((p[i] | 0x20) != lower_name[i]) return 0;
  return i == n && !lower_name[i];
}

long http_serve_one(const char *buf, size_t len, struct http_out *out) {
  static struct {
    size_t name, name_len, value, value_len;
  } hs[MAX_REQ_HEADERS];

  size_t i = 0;
  while (i < len && (buf[i] == '\r' || buf[i] == '\n')) i++; /* empty lines before a request */
  size_t start = i, end = 0;
  for (size_t k = i; k < len; k++)
    if (buf[k] == '\n' && k > start && (buf[k - 1] == '\n' || (buf[k - 1] == '\r' && k >= 2 && buf[k - 2] == '\n'))) {
      end = k + 1;
      break;
    }
  if (!end) {
    if (len - start > HTTP_HEADER_LIMIT) return fail(431, "request headers larger than 16 KiB", out);
    if (start == len && start > HTTP_HEADER_LIMIT) return fail(400, "empty lines only", out);
    return 0;
  }
  if (end - start > HTTP_HEADER_LIMIT) return fail(431, "request headers larger than 16 KiB", out);

  /* Request line: METHOD SP target SP HTTP/1.x */
  size_t p = start, m0 = p;
  while (p < end && is_tchar((unsigned char)buf[p])) p++;
  size_t mlen = p - m0;
  if (!mlen || buf[p] != ' ') return fail(400, "malformed request line", out);
  size_t t0 = ++p;
  while (p < end && (unsigned char)buf[p] > ' ' && buf[p] != 0x7f) p++;
  size_t tlen = p - t0;
  if (!tlen || buf[p] != ' ') return fail(400, "malformed request target", out);
  p++;
  if (end - p < 9 || memcmp(buf + p, "HTTP/", 5) || buf[p + 5] < '0' || buf[p + 5] > '9' || buf[p + 6] != '.' ||
      buf[p + 7] < '0' || buf[p + 7] > '9')
    return fail(400, "malformed HTTP version", out);
  if (buf[p + 5] != '1') return fail(505, "only HTTP/1.x is served", out);
  int http10 = buf[p + 7] == '0';
  p += 8;
  if (buf[p] == '\r') p++;
  if (buf[p] != '\n') return fail(400, "malformed request line", out);
  p++;

  /* Header fields */
  size_t nh = 0, clen = 0;
  int have_clen = 0, close = http10, keep_alive = 0;
  while (p < end) {
    size_t l0 = p, eol = p;
    while (buf[eol] != '\n') eol++;
    size_t lend = eol > l0 && buf[eol - 1] == '\r' ? eol - 1 : eol;
    p = eol + 1;
    if (lend == l0) break; /* the blank line */
    if (buf[l0] == ' ' || buf[l0] == '\t') return fail(400, "obsolete header line folding", out);
    size_t c = l0;
    while (c < lend && is_tchar((unsigned char)buf[c])) c++;
    if (c == l0 || c == lend || buf[c] != ':') return fail(400, "malformed header field", out);
    size_t v0 = c + 1, v1 = lend;
    while (v0 < v1 && (buf[v0] == ' ' || buf[v0] == '\t')) v0++;
    while (v1 > v0 && (buf[v1 - 1] == ' ' || buf[v1 - 1] == '\t')) v1--;
    for (size_t k = v0; k < v1; k++)
      if (((unsigned char)buf[k] < 0x20 && buf[k] != '\t') || buf[k] == 0x7f)
        return fail(400, "control character in a header value", out);
    if (nh == MAX_REQ_HEADERS) return fail(431, "more than 100 request headers", out);
    hs[nh].name = l0, hs[nh].name_len = c - l0, hs[nh].value = v0, hs[nh].value_len = v1 - v0;
    nh++;
    const char *n = buf + l0;
    if (name_is(n, c - l0, "content-length")) {
      if (v0 == v1 || v1 - v0 > 18) return fail(v0 == v1 ? 400 : 413, "bad content-length", out);
      size_t v = 0;
      for (size_t k = v0; k < v1; k++) {
        if (buf[k] < '0' || buf[k] > '9') return fail(400, "bad content-length", out);
        v = v * 10 + (size_t)(buf[k] - '0');
      }
      if (have_clen && v != clen) return fail(400, "conflicting content-length headers", out);
      clen = v, have_clen = 1;
    } else if (name_is(n, c - l0, "transfer-encoding"))
      return fail(501, "transfer-encoding is not supported: send content-length", out);
    else if (name_is(n, c - l0, "connection")) {
      if (token_in_list(buf + v0, v1 - v0, "close")) close = 1;
      if (token_in_list(buf + v0, v1 - v0, "keep-alive")) keep_alive = 1;
    }
  }
  if (http10 && keep_alive) close = 0;
  if (clen > mem_body_limit()) return fail(413, "request body larger than the unikernel's limit", out);
  if (len - end < clen) return 0;

  /* A complete request: copy it into the arena and run the function. */
  arena_reset();
  struct fn_request req;
  struct fn_header *h = arena_alloc(sizeof *h * (nh ? nh : 1));
  if (!h) oom("the request");
  for (size_t k = 0; k < nh; k++) {
    h[k].name = arena_strndup(buf + hs[k].name, hs[k].name_len);
    h[k].value = arena_strndup(buf + hs[k].value, hs[k].value_len);
  }
  size_t q = t0;
  while (q < t0 + tlen && buf[q] != '?') q++;
  req.method = arena_strndup(buf + m0, mlen);
  req.path = arena_strndup(buf + t0, q - t0);
  req.query = q < t0 + tlen ? arena_strndup(buf + q + 1, t0 + tlen - q - 1) : "";
  req.headers = h;
  req.num_headers = nh;
  req.body = arena_strndup(buf + end, clen);
  req.body_len = clen;

  struct fn_response *res = &response;
  *res = (struct fn_response){.status = 200};
  fn_handle(&req, res);

  int status = res->status;
  close |= res->close;
  size_t blen = res->len;
  if (status < 200 || status == 204 || status == 304) blen = 0;
  struct sb head = {0};
  finish_head(&head, status, res, blen, close);
  if (!strcmp(req.method, "HEAD")) blen = 0;
  *out = (struct http_out){head.p, head.n, res->body, blen, close};
  return (long)(end + clen);
}
