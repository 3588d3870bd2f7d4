/*
 * fennec-agent: PID 1 of Fennec's Linux guest (guest/linux/README.md).
 *
 * 1. mounts devtmpfs, proc and sysfs; reads /proc/cmdline (fennec.* parameters);
 * 2. mounts the function's root read-only at /newroot (fennec.root=9p:<tag> or blk:<device>),
 *    with tmpfs on /tmp and /run/fennec, proc, sysfs and /dev inside it;
 * 3. reads <root>/fennec/guest.conf (argv=, env=, cwd=, socket= or port=, callback=);
 * 4. starts the function chrooted into the root, its stdout and stderr on pipes the agent reads
 *    and sends to the host as LOG frames (the function's logs; the serial console keeps the
 *    kernel's and the agent's own messages);
 * 5. once the function accepts on its socket or port, sends READY on the virtio-serial port
 *    named fennec.0;
 * 6. bridges the framed guest channel (docs/guest-channel.md) to connections to the function,
 *    in one poll() loop, and answers PING with PONG (mixing the payload into the RNG pool);
 * 7. when the function exits, prints its status on the console and reboots, which ends QEMU
 *    (reboot=t panic=-1, -no-reboot).
 *
 * Build: gcc -static -O2 -o init agent.c (guest/linux/build.sh does it).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define AGENT_NAME "fennec-agent 1"
#define ROOT "/newroot"

/* Frame types (docs/guest-channel.md). */
enum { F_READY = 1, F_OPEN, F_DATA, F_EOF, F_CLOSE, F_LOG, F_PING, F_PONG, F_CONNECT };
/* Ids of streams the guest opens (CONNECT: the handler binding to Fennec) have this bit set;
   the host's own (OPEN) never do, so the two sides never pick the same id. */
#define GUEST_STREAM 0x80000000u
#define HDR 9
#define MAX_PAYLOAD 65536
#define MAX_STREAMS 256
/* Stop reading the function's sockets while this much is queued for the host. */
#define OUT_HIGH (512 * 1024)
/* Stop reading the channel while one stream has this much queued for the function. */
#define PENDING_HIGH (1024 * 1024)
/* The function's output is queued for the host only while less than this waits to go: below
   OUT_HIGH, so a function that floods its logs never holds up its own responses. What comes
   meanwhile is read anyway (the function never blocks on a full pipe), dropped and counted. */
#define LOG_HIGH (256 * 1024)
/* Read from one output pipe per turn of the loop (one LOG frame), so neither starves the other. */
#define LOG_CHUNK 65536
/* The capacity asked for the function's stdout and stderr pipes. A runtime that buffers its output
   when a pipe is full (Node does) writes up to this much before its answer at once, so the agent
   can send it before the answer; pages are only taken as they are written. */
#define OUTPUT_PIPE (1024 * 1024)
#define MAX_ARGS 256

/* ---------- small helpers ---------- */

static int debug;

static double uptime(void) {
  struct timespec ts;
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
  char line[1024];
  int n = snprintf(line, sizeof line, "fennec-agent[%.3f]: ", uptime());
  va_list ap;
  va_start(ap, fmt);
  n += vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
  va_end(ap);
  if (n > (int)sizeof line - 2) n = sizeof line - 2;
  line[n++] = '\n';
  ssize_t w = write(2, line, n);
  (void)w;
}

static void stop_vm(void) __attribute__((noreturn));
static void stop_vm(void) {
  sync();
  reboot(RB_AUTOBOOT);
  for (;;) pause();
}

static void fatal(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fatal(const char *fmt, ...) {
  char msg[900];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  say("fatal: %s", msg);
  stop_vm();
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* A growable byte buffer with a consumed head. */
struct buf {
  unsigned char *p;
  size_t head, len, cap; /* bytes [head, len) are live */
};

static size_t buf_used(const struct buf *b) { return b->len - b->head; }

static void buf_reserve(struct buf *b, size_t more) {
  if (b->head > 0 && (b->head == b->len || b->len + more > b->cap)) {
    memmove(b->p, b->p + b->head, b->len - b->head);
    b->len -= b->head;
    b->head = 0;
  }
  if (b->len + more <= b->cap) return;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + more) cap *= 2;
  unsigned char *p = realloc(b->p, cap);
  if (!p) fatal("out of memory (%zu bytes)", cap);
  b->p = p;
  b->cap = cap;
}

static void buf_add(struct buf *b, const void *data, size_t n) {
  buf_reserve(b, n);
  memcpy(b->p + b->len, data, n);
  b->len += n;
}

static void buf_consume(struct buf *b, size_t n) {
  b->head += n;
  if (b->head == b->len) b->head = b->len = 0;
}

static void buf_free(struct buf *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

/* ---------- kernel command line ---------- */

static char cmdline[4096];

/* The value of `name=` on the kernel command line, or NULL. Values end at whitespace. */
static const char *param(const char *name, char *dst, size_t dstsz) {
  size_t nl = strlen(name);
  for (char *p = cmdline; *p;) {
    while (*p == ' ' || *p == '\n' || *p == '\t') p++;
    char *end = p;
    while (*end && *end != ' ' && *end != '\n' && *end != '\t') end++;
    if ((size_t)(end - p) > nl && !strncmp(p, name, nl) && p[nl] == '=') {
      size_t vl = end - p - nl - 1;
      if (vl >= dstsz) vl = dstsz - 1;
      memcpy(dst, p + nl + 1, vl);
      dst[vl] = 0;
      return dst;
    }
    p = end;
  }
  return NULL;
}

/* ---------- boot: mounts ---------- */

static void mount_or_warn(const char *src, const char *dst, const char *type, unsigned long flags,
                          const char *data) {
  if (mount(src, dst, type, flags, data) < 0)
    say("warning: mount %s on %s: %s", type ? type : src, dst, strerror(errno));
}

static void mount_root(const char *spec) {
  int tries = 0;
  if (!strncmp(spec, "9p:", 3)) {
    const char *tag = spec + 3;
    /* msize: the largest the virtio transport takes (6.1 clamps to 512000). cache=loose: the
       root is read-only, so the page cache may keep what it read (executables, modules). */
    while (mount(tag, ROOT, "9p", MS_RDONLY | MS_NODEV,
                 "trans=virtio,version=9p2000.L,msize=512000,cache=loose") < 0) {
      if (errno != ENOENT || ++tries > 500)
        fatal("mount 9p tag '%s' on " ROOT ": %s (is -device virtio-9p-*,mount_tag=%s there?)", tag,
              strerror(errno), tag);
      sleep_ms(10); /* the device may still be probing */
    }
  } else if (!strncmp(spec, "blk:", 4)) {
    const char *dev = spec + 4;
    while (access(dev, F_OK) < 0) {
      if (++tries > 500) fatal("block device %s did not appear", dev);
      sleep_ms(10);
    }
    /* norecovery: never replay a journal on the read-only image. */
    if (mount(dev, ROOT, "ext4", MS_RDONLY | MS_NODEV, "norecovery") < 0)
      fatal("mount ext4 %s on " ROOT ": %s", dev, strerror(errno));
  } else {
    fatal("fennec.root=%s: expected 9p:<tag> or blk:<device>", spec);
  }
}

static void mount_inside_root(void) {
  char tmpsize[64], runsize[64], opts[160];
  if (!param("fennec.tmpsize", tmpsize, sizeof tmpsize)) strcpy(tmpsize, "64m");
  if (!param("fennec.runsize", runsize, sizeof runsize)) strcpy(runsize, "4m");
  snprintf(opts, sizeof opts, "size=%s,mode=1777", tmpsize);
  mount_or_warn("tmpfs", ROOT "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, opts);
  snprintf(opts, sizeof opts, "size=%s,mode=0755", runsize);
  mount_or_warn("tmpfs", ROOT "/run/fennec", "tmpfs", MS_NOSUID | MS_NODEV, opts);
  mount_or_warn("proc", ROOT "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  mount_or_warn("sysfs", ROOT "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  mount_or_warn("devtmpfs", ROOT "/dev", "devtmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755");
}

/* Brings the loopback interface up (the kernel then adds 127.0.0.1/8 by itself). */
static void loopback_up(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strcpy(ifr.ifr_name, "lo");
  if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
    say("warning: loopback: %s", strerror(errno));
  } else {
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) say("warning: loopback up: %s", strerror(errno));
  }
  if (s >= 0) close(s);
}

/* ---------- guest.conf ---------- */

static char *fn_argv[MAX_ARGS + 1];
static char *fn_env[MAX_ARGS + 3];
static int fn_argc, fn_envc;
static char *fn_cwd = "/";
static char *fn_socket; /* path inside the root */
/* host-socket=: where the agent listens for the function's connections to Fennec (the handler
   binding); each one becomes a stream the guest opens on the channel (CONNECT). */
static char *fn_host_socket;
static int fn_port;
/* callback=arg: the readiness callback URL (fennec.callback= on the kernel command line) is the
   function's last argument, as UniFaaS's Linux images hand it to their program. */
static int fn_callback_arg;

/* fennec.port=none: no guest channel; the function is reached over the guest's IP network (a
   UniFaaS guest: QEMU user-mode networking or a tap), so the agent only mounts, starts and reaps. */
static int no_channel;

static void read_conf(const char *path) {
  FILE *f = fopen(path, "re");
  if (!f) fatal("cannot read %s: %s", path, strerror(errno));
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  int lineno = 0;
  while ((n = getline(&line, &cap, f)) >= 0) {
    lineno++;
    if (n > 0 && line[n - 1] == '\n') line[--n] = 0;
    if (n == 0 || line[0] == '#') continue;
    char *eq = strchr(line, '=');
    if (!eq) {
      say("warning: %s:%d: no '=', ignored", path, lineno);
      continue;
    }
    *eq = 0;
    char *key = line, *val = strdup(eq + 1);
    if (!val) fatal("out of memory");
    if (!strcmp(key, "argv")) {
      if (fn_argc == MAX_ARGS) fatal("%s: more than %d argv lines", path, MAX_ARGS);
      fn_argv[fn_argc++] = val;
    } else if (!strcmp(key, "env")) {
      if (fn_envc == MAX_ARGS) fatal("%s: more than %d env lines", path, MAX_ARGS);
      if (!strchr(val, '=')) fatal("%s:%d: env=%s is not NAME=value", path, lineno, val);
      fn_env[fn_envc++] = val;
    } else if (!strcmp(key, "cwd")) {
      fn_cwd = val;
    } else if (!strcmp(key, "socket")) {
      if (val[0] != '/' || strlen(ROOT) + strlen(val) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        fatal("%s:%d: socket=%s must be an absolute path shorter than %zu bytes", path, lineno, val,
              sizeof(((struct sockaddr_un *)0)->sun_path) - strlen(ROOT));
      fn_socket = val;
    } else if (!strcmp(key, "host-socket")) {
      if (val[0] != '/' || strlen(ROOT) + strlen(val) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        fatal("%s:%d: host-socket=%s must be an absolute path shorter than %zu bytes", path, lineno,
              val, sizeof(((struct sockaddr_un *)0)->sun_path) - strlen(ROOT));
      fn_host_socket = val;
    } else if (!strcmp(key, "callback")) {
      if (strcmp(val, "arg")) fatal("%s:%d: callback=%s: the only value is arg", path, lineno, val);
      fn_callback_arg = 1;
    } else if (!strcmp(key, "port")) {
      fn_port = atoi(val);
      if (fn_port <= 0 || fn_port > 65535) fatal("%s:%d: bad port=%s", path, lineno, val);
    } else {
      say("warning: %s:%d: unknown key '%s', ignored", path, lineno, key);
    }
  }
  free(line);
  fclose(f);
  if (fn_argc == 0) fatal("%s: no argv= line", path);
  if (fn_callback_arg) {
    /* The host always passes one on an IP network; without it the program is told to skip it. */
    static char url[512];
    if (fn_argc == MAX_ARGS) fatal("%s: more than %d argv lines", path, MAX_ARGS);
    fn_argv[fn_argc++] = param("fennec.callback", url, sizeof url) ? url : "ignore";
  }
  /* Without a channel (fennec.port=none) the function serves on the guest's network itself. */
  if (no_channel) {
    if (fn_socket || fn_port || fn_host_socket)
      fatal("%s: socket=, port= and host-socket= go with the channel, not fennec.port=none", path);
    return;
  }
  if (!fn_socket == !fn_port) fatal("%s: exactly one of socket= and port= is needed", path);
  char *extra = NULL;
  if (fn_socket ? asprintf(&extra, "FENNEC_SOCKET=%s", fn_socket) < 0
                : asprintf(&extra, "PORT=%d", fn_port) < 0)
    fatal("out of memory");
  fn_env[fn_envc++] = extra;
  if (fn_host_socket) {
    if (asprintf(&extra, "FENNEC_HOST_SOCKET=%s", fn_host_socket) < 0) fatal("out of memory");
    fn_env[fn_envc++] = extra;
  }
}

/* ---------- the function process ---------- */

static pid_t fn_pid;
/* The write ends of the function's stdout and stderr pipes (-1: no channel, the console). */
static int fn_out[2] = {-1, -1};

static void start_function(void) {
  fn_pid = fork();
  if (fn_pid < 0) fatal("fork: %s", strerror(errno));
  if (fn_pid > 0) {
    /* Only the function holds the write ends: the pipes end (EOF) when it and its children do. */
    for (int i = 0; i < 2; i++)
      if (fn_out[i] >= 0) close(fn_out[i]);
    return;
  }
  /* child */
  sigset_t all;
  sigemptyset(&all);
  sigprocmask(SIG_SETMASK, &all, NULL);
  signal(SIGPIPE, SIG_DFL);
  setsid();
  if (chroot(ROOT) < 0 || chdir("/") < 0) {
    say("chroot " ROOT ": %s", strerror(errno));
    _exit(126);
  }
  if (chdir(fn_cwd) < 0) {
    say("chdir %s: %s", fn_cwd, strerror(errno));
    _exit(126);
  }
  int null = open("/dev/null", O_RDONLY);
  if (null >= 0 && null != 0) {
    dup2(null, 0);
    close(null);
  }
  if (fn_out[0] >= 0) {
    /* dup2 clears close-on-exec on the copies: the pipes' other fds close at exec. */
    dup2(fn_out[0], 1);
    dup2(fn_out[1], 2);
  } else {
    int con = open("/dev/console", O_WRONLY | O_NOCTTY);
    if (con >= 0) {
      dup2(con, 1);
      dup2(con, 2);
      if (con > 2) close(con);
    }
  }
  clearenv();
  for (int i = 0; i < fn_envc; i++) putenv(fn_env[i]);
  execvp(fn_argv[0], fn_argv);
  say("exec %s: %s", fn_argv[0], strerror(errno));
  _exit(127);
}

static void send_last_output(void);

static void reap(void) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    if (pid != fn_pid) continue;
    /* What it wrote last (often why it died) reaches the host before the VM stops. */
    send_last_output();
    if (WIFEXITED(status))
      say("function exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
      say("function killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
      say("function ended (wait status 0x%x)", status);
    stop_vm();
  }
}

/* Connects to the function: nonblocking; returns the fd (connect may be in progress) or -1. */
static int connect_function(int *in_progress) {
  int fd;
  *in_progress = 0;
  if (fn_socket) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, ROOT "%s", fn_socket);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) return fd;
  } else {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(fn_port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    /* The host already batches what it sends; and ACK at once, so that a function that writes
       a response in two small pieces is not held up 40 ms by its Nagle + our delayed ACK. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) return fd;
    if (errno == EINPROGRESS) {
      *in_progress = 1;
      return fd;
    }
  }
  int e = errno;
  close(fd);
  errno = e;
  return -1;
}

/* ---------- the channel ---------- */

static int port_fd = -1;
static int port_up; /* the host is connected (no POLLHUP) */
static struct buf out; /* frames queued for the host */
static struct buf in;  /* bytes read from the host, not yet a whole frame */
static int urandom_fd = -1;

struct stream {
  uint32_t id; /* 0: free slot */
  int fd;
  int connecting; /* nonblocking TCP connect in progress */
  int eof_in;     /* the host sent EOF: shut down our write side once `pending` is flushed */
  struct buf pending; /* bytes for the function that did not fit yet */
};
static struct stream streams[MAX_STREAMS];
static int nstreams;

static void frame(int type, uint32_t stream, const void *payload, size_t len) {
  unsigned char h[HDR];
  h[0] = type;
  for (int i = 0; i < 4; i++) h[1 + i] = stream >> (8 * i);
  for (int i = 0; i < 4; i++) h[5 + i] = (uint32_t)len >> (8 * i);
  buf_reserve(&out, HDR + len);
  buf_add(&out, h, HDR);
  if (len) buf_add(&out, payload, len);
}

static void flush_out(void) {
  while (buf_used(&out) > 0 && port_up) {
    ssize_t n = write(port_fd, out.p + out.head, buf_used(&out));
    if (n > 0) {
      buf_consume(&out, n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      break; /* EAGAIN (host queue full or disconnected): wait for POLLOUT */
    }
  }
}

static struct stream *find_stream(uint32_t id) {
  for (int i = 0; i < MAX_STREAMS; i++)
    if (streams[i].id == id) return &streams[i];
  return NULL;
}

/* Releases a stream; sends CLOSE (with a reason) unless the host closed it. */
static void release(struct stream *s, int tell_host, const char *reason) {
  if (debug) say("stream %u closed%s%s", s->id, reason ? ": " : "", reason ? reason : "");
  if (tell_host) frame(F_CLOSE, s->id, reason, reason ? strlen(reason) : 0);
  if (s->fd >= 0) close(s->fd);
  buf_free(&s->pending);
  s->id = 0;
  s->fd = -1;
  nstreams--;
}

static void release_errno(struct stream *s, const char *what) {
  char reason[200];
  snprintf(reason, sizeof reason, "%s %s: %s", what,
           fn_socket ? fn_socket : "127.0.0.1 port", strerror(errno));
  release(s, 1, reason);
}

/* Writes what the stream has pending to the function; returns -1 if the stream was released. */
static int stream_flush(struct stream *s) {
  while (buf_used(&s->pending) > 0) {
    ssize_t n = send(s->fd, s->pending.p + s->pending.head, buf_used(&s->pending), MSG_NOSIGNAL);
    if (n > 0) {
      buf_consume(&s->pending, n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return 0;
    } else {
      /* The function closed the connection (perhaps after answering early, e.g. 413): pass on
         what it wrote before saying why the stream ends. */
      int e = errno;
      static unsigned char rest[MAX_PAYLOAD];
      ssize_t r;
      while ((r = recv(s->fd, rest, sizeof rest, MSG_DONTWAIT)) > 0) frame(F_DATA, s->id, rest, r);
      errno = e;
      release_errno(s, "write to");
      return -1;
    }
  }
  buf_free(&s->pending);
  if (s->eof_in) shutdown(s->fd, SHUT_WR);
  return 0;
}

static void on_open(uint32_t id) {
  if (id == 0 || (id & GUEST_STREAM) || find_stream(id)) {
    say("warning: OPEN for stream %u that is in use, ignored", id);
    return;
  }
  if (nstreams == MAX_STREAMS) {
    frame(F_CLOSE, id, "too many streams", 16);
    return;
  }
  struct stream *s = find_stream(0);
  if (!s) return; /* cannot happen: nstreams < MAX_STREAMS */
  memset(s, 0, sizeof *s);
  s->id = id;
  nstreams++;
  s->fd = connect_function(&s->connecting);
  if (s->fd < 0) release_errno(s, "connect");
  else if (debug) say("stream %u opened", id);
}

static void on_data(uint32_t id, const unsigned char *p, size_t n) {
  struct stream *s = find_stream(id);
  if (!s || id == 0 || s->eof_in || n == 0) return;
  buf_add(&s->pending, p, n);
  if (!s->connecting) stream_flush(s);
}

static void on_eof(uint32_t id) {
  struct stream *s = find_stream(id);
  if (!s || id == 0 || s->eof_in) return;
  s->eof_in = 1;
  if (!s->connecting && buf_used(&s->pending) == 0) shutdown(s->fd, SHUT_WR);
}

static void on_ping(const unsigned char *p, size_t n) {
  /* After a snapshot restore every clone has the same RNG state: mix in what the host sent
     (and the clock) so the clones diverge. Writing to /dev/urandom mixes without crediting. */
  if (urandom_fd >= 0) {
    struct timespec ts[2];
    clock_gettime(CLOCK_REALTIME, &ts[0]);
    clock_gettime(CLOCK_MONOTONIC, &ts[1]);
    ssize_t w = write(urandom_fd, ts, sizeof ts);
    if (n) w = write(urandom_fd, p, n);
    (void)w;
  }
  frame(F_PONG, 0, p, n > 64 ? 64 : n);
}

static void dispatch(int type, uint32_t id, const unsigned char *p, size_t n) {
  switch (type) {
  case F_OPEN: on_open(id); break;
  case F_DATA: on_data(id, p, n); break;
  case F_EOF: on_eof(id); break;
  case F_CLOSE: {
    struct stream *s = find_stream(id);
    if (s && id) release(s, 0, NULL);
    break;
  }
  case F_PING: on_ping(p, n); break;
  default: break; /* unknown or guest-to-host types: ignored */
  }
}

/* Parses whole frames out of `in`. */
static void parse_in(void) {
  while (buf_used(&in) >= HDR) {
    const unsigned char *h = in.p + in.head;
    uint32_t id = h[1] | h[2] << 8 | h[3] << 16 | (uint32_t)h[4] << 24;
    uint32_t len = h[5] | h[6] << 8 | h[7] << 16 | (uint32_t)h[8] << 24;
    if (len > MAX_PAYLOAD) {
      /* The framing is lost; nothing after this can be trusted. */
      say("protocol error: frame type %u stream %u with length %u; dropping the channel input "
          "and all streams",
          h[0], id, len);
      buf_consume(&in, buf_used(&in));
      for (int i = 0; i < MAX_STREAMS; i++)
        if (streams[i].id) release(&streams[i], 1, "protocol error");
      return;
    }
    if (buf_used(&in) < HDR + len) return;
    dispatch(h[0], id, h + HDR, len);
    buf_consume(&in, HDR + len);
  }
}

static int channel_blocked(void) {
  for (int i = 0; i < MAX_STREAMS; i++)
    if (streams[i].id && buf_used(&streams[i].pending) > PENDING_HIGH) return 1;
  return 0;
}

/* The host disconnected. Its streams are gone with it; keep the port open (it can be opened only
   once) and wait for the host to come back. */
static void host_gone(void) {
  say("host disconnected from the channel; waiting for it");
  port_up = 0;
  buf_consume(&in, buf_used(&in));
  buf_consume(&out, buf_used(&out));
  for (int i = 0; i < MAX_STREAMS; i++)
    if (streams[i].id) release(&streams[i], 0, NULL);
}

/* Reads from the port; notices a host that went away. */
static void read_port(void) {
  for (int rounds = 0; rounds < 16 && !channel_blocked(); rounds++) {
    buf_reserve(&in, 64 * 1024);
    ssize_t n = read(port_fd, in.p + in.len, in.cap - in.len);
    if (n > 0) {
      in.len += n;
      parse_in();
    } else if (n == 0) {
      host_gone();
      return;
    } else if (errno == EINTR) {
      continue;
    } else {
      if (errno != EAGAIN) say("warning: read channel: %s", strerror(errno));
      return;
    }
  }
}

static void drain_outputs(void);

/* Reads from a function socket into DATA frames. */
static void read_stream(struct stream *s) {
  static unsigned char chunk[MAX_PAYLOAD];
  while (buf_used(&out) < OUT_HIGH) {
    ssize_t n = recv(s->fd, chunk, sizeof chunk, 0);
    if (n > 0) {
      if (fn_port && !(s->id & GUEST_STREAM)) { /* TCP_QUICKACK is not sticky: renew it */
        int one = 1;
        setsockopt(s->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
      }
      /* What the function logged before it wrote this goes first: the host gives a line to the
         call in flight when the line arrives, and this may be the end of that call's answer. */
      if (!(s->id & GUEST_STREAM)) drain_outputs();
      frame(F_DATA, s->id, chunk, n);
    } else if (n == 0) {
      release(s, 1, NULL);
      return;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return;
    } else {
      release_errno(s, "read from");
      return;
    }
  }
}

static void finish_connect(struct stream *s) {
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err) {
    errno = err;
    release_errno(s, "connect");
    return;
  }
  s->connecting = 0;
  stream_flush(s);
}

/* ---------- the function's output: LOG frames ---------- */

struct output {
  int fd;                 /* the pipe's read end, nonblocking; -1 once it ended */
  int capacity;           /* the pipe's size: what one drain reads at most */
  uint32_t stream;        /* the LOG frame's stream: 1 stdout, 2 stderr (docs/guest-channel.md) */
  const char *name;
  unsigned long long dropped; /* bytes dropped since the last marker */
  int mid_line;           /* the last byte sent on this stream was not a newline */
};
static struct output outputs[2] = {{-1, 65536, 1, "stdout", 0, 0}, {-1, 65536, 2, "stderr", 0, 0}};

/* Makes the pipes the function's stdout and stderr go to (before it starts). */
static void make_output_pipes(void) {
  for (int i = 0; i < 2; i++) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) fatal("pipe: %s", strerror(errno));
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    int size = fcntl(p[0], F_SETPIPE_SZ, OUTPUT_PIPE);
    if (size < 0) size = fcntl(p[0], F_GETPIPE_SZ);
    if (size > 0) outputs[i].capacity = size;
    outputs[i].fd = p[0];
    fn_out[i] = p[1];
  }
}

static int log_room(void) { return port_up && buf_used(&out) < LOG_HIGH; }

/* Says, as a line of its own on the stream, how much of it was dropped. */
static void send_drop_marker(struct output *o) {
  char line[200];
  int n = snprintf(line, sizeof line, "%s[fennec-agent: %llu bytes of %s dropped: the channel to the host was full]\n",
                   o->mid_line ? "\n" : "", o->dropped, o->name);
  frame(F_LOG, o->stream, line, n);
  o->dropped = 0;
  o->mid_line = 0;
}

/* Sends the markers of drops that no later output carried (once there is room again). */
static void send_drop_markers(void) {
  for (int i = 0; i < 2; i++)
    if (outputs[i].dropped && log_room()) send_drop_marker(&outputs[i]);
}

/* Writes what is queued for the host, and the drop markers that writing made room for. A marker
   waits for room below LOG_HIGH; a flush that empties the queue in one go made that room, and
   with nothing queued the loop asks poll() for no POLLOUT: once the function has stopped writing
   nothing else may wake it (its connection idle and closed), so the marker would wait for the
   next call, or the end of the VM, and be taken for that call's line, or lost. */
static void flush_host(void) {
  send_drop_markers();
  flush_out();
  if (outputs[0].dropped || outputs[1].dropped) {
    send_drop_markers();
    flush_out();
  }
}

/* Reads what the function wrote on one stream (at most LOG_CHUNK) into a LOG frame, or drops it
   when the channel is full or the host away; returns the bytes read (0: nothing more now). */
static ssize_t read_output(struct output *o) {
  static unsigned char chunk[LOG_CHUNK];
  if (o->fd < 0) return 0;
  ssize_t n = read(o->fd, chunk, sizeof chunk);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
  if (n <= 0) { /* EOF: the function and its children closed it */
    if (n < 0) say("warning: read the function's %s: %s", o->name, strerror(errno));
    close(o->fd);
    o->fd = -1;
    return 0;
  }
  if (!log_room()) {
    o->dropped += n;
    return n;
  }
  if (o->dropped) send_drop_marker(o);
  frame(F_LOG, o->stream, chunk, n);
  o->mid_line = chunk[n - 1] != '\n';
  return n;
}

/* Reads what is in the function's pipes now: at most a pipe's capacity each, so all that was
   written before this call, even while the function goes on writing. */
static void drain_outputs(void) {
  for (int i = 0; i < 2; i++)
    for (ssize_t got = 0, n; got < outputs[i].capacity && (n = read_output(&outputs[i])) > 0;) got += n;
}

/* The function ended: sends what is left in its pipes and everything queued, before the VM stops
   (bounded: a child it left behind may still be writing; the host may be gone). */
static void send_last_output(void) {
  if (port_fd < 0) return;
  for (int i = 0; i < 2; i++)
    for (int read_total = 0; read_total < PENDING_HIGH;) {
      ssize_t n = read_output(&outputs[i]);
      if (n <= 0) break;
      read_total += n;
      if (!log_room()) flush_out();
    }
  double give_up = uptime() + 2;
  for (;;) {
    flush_host(); /* the markers too, once the queue has room for them */
    if (!port_up || buf_used(&out) == 0 || uptime() >= give_up) break;
    struct pollfd p = {port_fd, POLLOUT, 0};
    if (poll(&p, 1, 100) < 0 || (p.revents & POLLHUP)) break;
  }
}

/* ---------- the handler binding: streams the guest opens ---------- */

static int host_listen_fd = -1;
static uint32_t next_guest_id;

/* Listens on host-socket= (in the root's /run/fennec tmpfs) before the function starts. */
static void listen_host_socket(void) {
  if (!fn_host_socket) return;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, ROOT "%s", fn_host_socket);
  unlink(sa.sun_path);
  host_listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (host_listen_fd < 0 || bind(host_listen_fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
      listen(host_listen_fd, 64) < 0)
    fatal("listen on %s: %s", fn_host_socket, strerror(errno));
  /* A function that drops root can still reach Fennec. */
  chmod(sa.sun_path, 0666);
}

/* Each connection the function makes becomes a stream to the host (CONNECT, then DATA). */
static void accept_host_connections(void) {
  for (;;) {
    int fd = accept4(host_listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) say("warning: accept %s: %s", fn_host_socket, strerror(errno));
      return;
    }
    if (nstreams == MAX_STREAMS || !port_up) {
      close(fd); /* the function sees its connection end: no room, or no host to reach */
      continue;
    }
    uint32_t id;
    do id = GUEST_STREAM | (next_guest_id++ & ~GUEST_STREAM);
    while (find_stream(id));
    struct stream *s = find_stream(0);
    if (!s) { /* cannot happen: nstreams < MAX_STREAMS */
      close(fd);
      return;
    }
    memset(s, 0, sizeof *s);
    s->id = id;
    s->fd = fd;
    nstreams++;
    frame(F_CONNECT, id, NULL, 0);
    if (debug) say("stream %u opened by the function", id);
  }
}

/* Finds the virtio-serial port by name and opens it (once: a port can be opened only once). */
static int open_port(const char *name) {
  for (int tries = 0; tries < 500; tries++) {
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    while (d && (e = readdir(d))) {
      if (e->d_name[0] == '.') continue;
      char path[300], got[128] = "";
      snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
      int fd = open(path, O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      ssize_t n = read(fd, got, sizeof got - 1);
      close(fd);
      if (n <= 0) continue;
      got[n] = 0;
      got[strcspn(got, "\n")] = 0;
      if (strcmp(got, name)) continue;
      snprintf(path, sizeof path, "/dev/%s", e->d_name);
      closedir(d);
      int pfd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
      if (pfd < 0) fatal("open %s (virtio port %s): %s", path, name, strerror(errno));
      return pfd;
    }
    if (d) closedir(d);
    sleep_ms(10);
  }
  fatal("no virtio-serial port named %s (-device virtserialport,name=%s)", name, name);
}

/* Waits on signalfd only (function exit) for up to `ms`. */
static void wait_signals(int sfd, int ms) {
  struct pollfd p = {sfd, POLLIN, 0};
  if (poll(&p, 1, ms) > 0) {
    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) > 0) {
    }
    reap();
  }
}

/* Before READY: waits up to `ms` for the function to exit, passing on what it writes meanwhile. */
static void wait_starting(int sfd, int ms) {
  struct pollfd p[3] = {{sfd, POLLIN, 0}, {outputs[0].fd, POLLIN, 0}, {outputs[1].fd, POLLIN, 0}};
  if (poll(p, 3, ms) > 0) {
    for (int i = 0; i < 2; i++)
      if (p[1 + i].revents) read_output(&outputs[i]);
    if (p[0].revents) wait_signals(sfd, 0);
  }
  flush_host();
}

static int port_hung_up(void) {
  struct pollfd p = {port_fd, POLLIN | POLLOUT, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & POLLHUP);
}

int main(void) {
  /* Before anything else: a console for our messages (the initramfs has /dev/console). */
  if (fcntl(2, F_GETFD) < 0) {
    int con = open("/dev/console", O_RDWR | O_NOCTTY);
    if (con >= 0) {
      dup2(con, 0);
      dup2(con, 1);
      dup2(con, 2);
      if (con > 2) close(con);
    }
  }
  mount_or_warn("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  mount_or_warn("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  mount_or_warn("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  int cfd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
  if (cfd >= 0) {
    ssize_t n = read(cfd, cmdline, sizeof cmdline - 1);
    cmdline[n > 0 ? n : 0] = 0;
    close(cfd);
  }
  char v[256], portname[128], conf[256];
  debug = param("fennec.debug", v, sizeof v) && strcmp(v, "0");
  int ready_timeout = param("fennec.ready_timeout", v, sizeof v) ? atoi(v) : 60;
  if (!param("fennec.port", portname, sizeof portname)) strcpy(portname, "fennec.0");
  if (!param("fennec.conf", conf, sizeof conf)) strcpy(conf, "/fennec/guest.conf");
  if (!param("fennec.root", v, sizeof v)) fatal("no fennec.root= on the kernel command line");

  signal(SIGPIPE, SIG_IGN);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, NULL);
  int sfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
  if (sfd < 0) fatal("signalfd: %s", strerror(errno));
  urandom_fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);

  mount_root(v);
  mount_inside_root();
  loopback_up();
  char confpath[300];
  snprintf(confpath, sizeof confpath, ROOT "%s", conf);
  no_channel = !strcmp(portname, "none");
  read_conf(confpath);
  if (no_channel) {
    say("starting %s (no channel: it serves on the guest's network)", fn_argv[0]);
    start_function();
    for (;;) wait_signals(sfd, -1); /* reap() reboots when the function exits */
  }
  port_fd = open_port(portname);
  port_up = 1;
  listen_host_socket();
  make_output_pipes();

  say("starting %s", fn_argv[0]);
  start_function();

  /* Wait until the function accepts connections (checking now and then; it may also exit). */
  double deadline = uptime() + ready_timeout;
  for (int delay = 2;; delay = delay < 20 ? delay + 2 : 20) {
    int inprog, fd = connect_function(&inprog);
    if (fd >= 0 && inprog) {
      struct pollfd p = {fd, POLLOUT, 0};
      int err = 0;
      socklen_t len = sizeof err;
      if (poll(&p, 1, 1000) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
        close(fd);
        fd = -1;
      }
    }
    if (fd >= 0) {
      close(fd);
      break;
    }
    if (uptime() > deadline) {
      if (fn_socket)
        fatal("the function did not accept on %s within %d s (fennec.ready_timeout)", fn_socket,
              ready_timeout);
      fatal("the function did not accept on 127.0.0.1:%d within %d s (fennec.ready_timeout)",
            fn_port, ready_timeout);
    }
    wait_starting(sfd, delay);
  }
  frame(F_READY, 0, AGENT_NAME, strlen(AGENT_NAME));
  flush_out();
  say("ready (%s)", fn_socket ? fn_socket : "port");

  /* The one poll() loop. */
  static struct pollfd pfd[5 + MAX_STREAMS];
  static struct stream *owner[5 + MAX_STREAMS];
  static uint32_t owner_id[5 + MAX_STREAMS];
  for (;;) {
    int n = 0;
    if (port_up) {
      short ev = 0;
      if (!channel_blocked()) ev |= POLLIN;
      if (buf_used(&out)) ev |= POLLOUT;
      pfd[n] = (struct pollfd){port_fd, ev, 0};
      owner[n++] = NULL;
    }
    int listen_k = -1;
    if (host_listen_fd >= 0 && port_up && nstreams < MAX_STREAMS) {
      listen_k = n;
      pfd[n] = (struct pollfd){host_listen_fd, POLLIN, 0};
      owner[n++] = NULL;
    }
    /* The function's output is always read, whether or not the host can take it now. */
    int output_k = n;
    for (int i = 0; i < 2; i++) {
      pfd[n] = (struct pollfd){outputs[i].fd, POLLIN, 0};
      owner[n++] = NULL;
    }
    pfd[n] = (struct pollfd){sfd, POLLIN, 0};
    owner[n++] = NULL;
    int first_stream = n;
    for (int i = 0; i < MAX_STREAMS; i++) {
      struct stream *s = &streams[i];
      if (!s->id) continue;
      short ev = 0;
      if (s->connecting || buf_used(&s->pending)) ev |= POLLOUT;
      if (!s->connecting && buf_used(&out) < OUT_HIGH) ev |= POLLIN;
      /* A negative fd is skipped by poll(): no POLLHUP storm for a stream we cannot serve now. */
      pfd[n] = (struct pollfd){ev ? s->fd : -1, ev, 0};
      owner_id[n] = s->id;
      owner[n++] = s;
    }
    /* While the host is away, look for it again every 250 ms: poll() on a port without a host
       reports POLLHUP at once, so the port cannot stay in the set. */
    int r = poll(pfd, n, port_up ? -1 : 250);
    if (r < 0 && errno != EINTR) fatal("poll: %s", strerror(errno));
    if (!port_up) {
      if (!port_hung_up()) {
        say("host connected to the channel");
        port_up = 1;
      }
    } else if (r > 0 && pfd[0].revents) {
      if (pfd[0].revents & POLLIN) read_port();
      if (port_up && (pfd[0].revents & POLLHUP)) host_gone();
    }
    for (int i = 0; r > 0 && i < 2; i++)
      if (pfd[output_k + i].revents) read_output(&outputs[i]);
    if (r > 0 && pfd[first_stream - 1].revents) wait_signals(sfd, 0);
    if (r > 0 && listen_k >= 0 && pfd[listen_k].revents) accept_host_connections();
    for (int k = first_stream; r > 0 && k < n; k++) {
      struct stream *s = owner[k];
      short re = pfd[k].revents;
      if (!re || s->id != owner_id[k] || s->fd != pfd[k].fd) continue; /* released meanwhile */
      if (s->connecting) {
        if (re & (POLLOUT | POLLERR | POLLHUP)) finish_connect(s);
        continue;
      }
      if ((re & POLLOUT) && buf_used(&s->pending) && stream_flush(s) < 0) continue;
      if (re & (POLLIN | POLLHUP | POLLERR)) read_stream(s);
    }
    flush_host();
  }
}
