/*
 * Fennec unikernel: the guest channel (docs/guest-channel.md) on COM1. Reads frames from the
 * receive ring, keeps one input buffer per open stream, and serves the HTTP requests found on
 * them one at a time, in the order they complete.
 */
#include "kernel.h"

/* ---- sending ---- */
static uint32_t tx_left; /* payload bytes of the frame being written that are still due */

static void tx_payload(const void *p, size_t n) {
  tx_bytes(p, n);
  tx_left -= (uint32_t)n;
}

/* One frame whose payload is a followed by b (a frame is at most FRAME_MAX bytes). */
void chan_frame(uint8_t type, uint32_t stream, const void *a, size_t alen, const void *b, size_t blen) {
  uint32_t len = (uint32_t)(alen + blen);
  uint8_t h[9] = {type,
                  (uint8_t)stream,
                  (uint8_t)(stream >> 8),
                  (uint8_t)(stream >> 16),
                  (uint8_t)(stream >> 24),
                  (uint8_t)len,
                  (uint8_t)(len >> 8),
                  (uint8_t)(len >> 16),
                  (uint8_t)(len >> 24)};
  tx_bytes(h, sizeof h);
  tx_left = len;
  if (alen) tx_payload(a, alen);
  if (blen) tx_payload(b, blen);
}

void chan_pad_partial_frame(void) {
  static const uint8_t zeros[64];
  while (tx_left) {
    uint32_t n = tx_left < sizeof zeros ? tx_left : sizeof zeros;
    tx_payload(zeros, n);
  }
}

void chan_log(const char *text, size_t n) {
  if (n > FRAME_MAX) n = FRAME_MAX;
  chan_frame(F_LOG, 0, text, n, 0, 0);
}

/* DATA frames carrying a then b, split at FRAME_MAX. */
static void send_data(uint32_t stream, const char *a, size_t alen, const char *b, size_t blen) {
  while (alen + blen) {
    size_t na = alen < FRAME_MAX ? alen : FRAME_MAX;
    size_t nb = blen < FRAME_MAX - na ? blen : FRAME_MAX - na;
    chan_frame(F_DATA, stream, a, na, b, nb);
    a += na, alen -= na, b += nb, blen -= nb;
  }
}

static void send_close(uint32_t stream, const char *reason) {
  chan_frame(F_CLOSE, stream, reason, reason ? strlen(reason) : 0, 0, 0);
}

/* ---- streams ---- */
#define MAX_STREAMS 64
struct stream {
  uint32_t id; /* 0: free slot */
  int peer_eof;
  char *buf;
  size_t len, cap;
};
static struct stream streams[MAX_STREAMS];

static struct stream *find(uint32_t id) {
  for (int i = 0; i < MAX_STREAMS; i++)
    if (streams[i].id == id) return &streams[i];
  return 0;
}

static void release(struct stream *s) {
  heap_free(s->buf);
  *s = (struct stream){0};
}

/* We are done with the stream: half-close, then release (what a server's close() does). */
static void finish(struct stream *s) {
  chan_frame(F_EOF, s->id, 0, 0, 0, 0);
  send_close(s->id, 0);
  release(s);
}

static void respond(struct stream *s, const struct http_out *o) {
  send_data(s->id, o->head, o->head_len, o->body, o->body_len);
}

/* Serves every complete request in the stream's buffer. */
static void serve(struct stream *s) {
  size_t off = 0;
  while (s->id && off < s->len) {
    struct http_out o;
    long r = http_serve_one(s->buf + off, s->len - off, &o);
    if (r == 0) break;
    respond(s, &o);
    if (r < 0 || o.close) {
      finish(s);
      return;
    }
    off += (size_t)r;
  }
  if (off) {
    memmove(s->buf, s->buf + off, s->len - off);
    s->len -= off;
  }
  if (s->peer_eof) finish(s); /* the client will send nothing more: a partial request is dropped */
}

static void on_data(struct stream *s, const uint8_t *p, size_t n) {
  if (s->peer_eof || !n) return;
  if (s->len + n > s->cap) {
    size_t cap = s->cap ? s->cap : 4 * KiB;
    while (cap < s->len + n) cap *= 2;
    char *nb = heap_alloc(cap);
    if (!nb) {
      struct http_out o;
      http_error(503, "the unikernel has no memory left to buffer this request", &o);
      respond(s, &o);
      finish(s);
      return;
    }
    if (s->len) memcpy(nb, s->buf, s->len);
    heap_free(s->buf);
    s->buf = nb;
    s->cap = cap;
  }
  memcpy(s->buf + s->len, p, n);
  s->len += n;
  serve(s);
}

/* ---- receiving ---- */
static uint8_t payload[FRAME_MAX];

static void dispatch(uint8_t type, uint32_t id, const uint8_t *p, uint32_t n) {
  struct stream *s;
  switch (type) {
  case F_OPEN:
    if (id == 0 || find(id)) {
      klog("channel: ignored OPEN of stream %u (%s)", id, id ? "already open" : "reserved id");
      return;
    }
    s = find(0);
    if (!s) {
      send_close(id, "too many streams");
      return;
    }
    s->id = id;
    return;
  case F_DATA:
    if (id && (s = find(id))) on_data(s, p, n);
    return;
  case F_EOF:
    if (id && (s = find(id))) {
      s->peer_eof = 1;
      serve(s);
    }
    return;
  case F_CLOSE:
    if (id && (s = find(id))) release(s);
    return;
  case F_PING:
    chan_frame(F_PONG, 0, p, n > 64 ? 64 : n, 0, 0);
    return;
  default: /* unknown or host-bound types are ignored */
    return;
  }
}

_Noreturn void chan_serve(void) {
  static const char ready[] = "fennec-unikernel/0.1";
  chan_frame(F_READY, 0, ready, sizeof ready - 1, 0, 0);
  uint8_t hdr[9];
  size_t have = 0; /* bytes of the header, then of the payload, read so far */
  int in_payload = 0;
  uint32_t len = 0;
  for (;;) {
    size_t got = in_payload ? rx_read(payload + have, len - have) : rx_read(hdr + have, sizeof hdr - have);
    if (!got) {
      rx_wait();
      continue;
    }
    have += got;
    if (!in_payload) {
      if (have < sizeof hdr) continue;
      len = hdr[5] | (uint32_t)hdr[6] << 8 | (uint32_t)hdr[7] << 16 | (uint32_t)hdr[8] << 24;
      if (len > FRAME_MAX) panic("channel: frame of %u bytes (the limit is %u)", len, FRAME_MAX);
      in_payload = 1;
      have = 0;
    }
    if (have < len) continue;
    dispatch(hdr[0], hdr[1] | (uint32_t)hdr[2] << 8 | (uint32_t)hdr[3] << 16 | (uint32_t)hdr[4] << 24, payload,
             len);
    in_payload = 0;
    have = 0;
  }
}
