// trellis-cni: a chained CNI plugin (spec 1.0/1.1) that holds a meshed pod's start until the node agent has its
// traffic captured. It asks the agent over a Unix socket; when the agent is unreachable, the agent's opt-in file decides.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

// Every input is bounded: the runtime's config, the agent's reply, the opt-in file, each string.
#define MAX_STDIN (1 << 20)
#define MAX_REPLY (64 << 10)
#define MAX_OPTIN (4 << 20)
#define MAX_REQUEST (64 << 10)
#define MAX_DEPTH 64
#define MAX_STR 4096
#define MAX_IPS 16
#define MAX_TIMEOUT_MS 600000

#define DEFAULT_SOCKET "/var/run/trellis/cni.sock"
#define DEFAULT_OPTIN "/var/run/trellis/cni/optin"
#define DEFAULT_TIMEOUT_MS 10000

// CNI error codes (spec: "Error codes").
enum {
  E_VERSION = 1,
  E_ENV = 4,
  E_IO = 5,
  E_DECODE = 6,
  E_CONFIG = 7,
  E_TRY_AGAIN = 11,
  E_AGENT = 100,
};

static const char *const SUPPORTED[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};
#define NSUPPORTED (sizeof(SUPPORTED) / sizeof(SUPPORTED[0]))

// The version errors are reported in: the config's, once it is known.
static char g_version[32] = "1.0.0";

// ---------------------------------------------------------------------------------------------------------------
// Output

__attribute__((format(printf, 1, 2))) static void note(const char *f, ...) {
  va_list ap;
  va_start(ap, f);
  fputs("trellis-cni: ", stderr);
  vfprintf(stderr, f, ap);
  fputc('\n', stderr);
  va_end(ap);
}

// snprintf that may cut long messages short, on purpose: every message and detail is bounded.
__attribute__((format(printf, 3, 4))) static void fmt(char *out, size_t cap, const char *f, ...) {
  va_list ap;
  va_start(ap, f);
  vsnprintf(out, cap, f, ap);
  va_end(ap);
}

// Length of the valid UTF-8 sequence at p, or 0: output stays valid JSON whatever bytes came in.
static size_t utf8_len(const unsigned char *p) {
  if (p[0] < 0x80) return 1;
  size_t n = p[0] >= 0xf0 && p[0] <= 0xf4 ? 4 : p[0] >= 0xe0 ? 3 : p[0] >= 0xc2 && p[0] < 0xe0 ? 2 : 0;
  if (n == 0) return 0;
  for (size_t i = 1; i < n; i++) if ((p[i] & 0xc0) != 0x80) return 0;
  if (n == 3 && ((p[0] == 0xe0 && p[1] < 0xa0) || (p[0] == 0xed && p[1] >= 0xa0))) return 0;
  if (n == 4 && ((p[0] == 0xf0 && p[1] < 0x90) || (p[0] == 0xf4 && p[1] >= 0x90))) return 0;
  return n;
}

static void put_json_string(FILE *out, const char *s) {
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p >= 0x80) {
      size_t n = utf8_len(p);
      if (n == 0) {
        fputs("\ufffd", out);
      } else {
        fwrite(p, 1, n, out);
        p += n - 1;
      }
      continue;
    }
    switch (*p) {
      case '"': fputs("\\\"", out); break;
      case '\\': fputs("\\\\", out); break;
      case '\n': fputs("\\n", out); break;
      case '\r': fputs("\\r", out); break;
      case '\t': fputs("\\t", out); break;
      default:
        if (*p < 0x20) fprintf(out, "\\u%04x", *p);
        else fputc(*p, out);
    }
  }
  fputc('"', out);
}

static void flush_or_die(void) {
  if (fflush(stdout) != 0 || ferror(stdout)) {
    note("writing the result to stdout failed: %s", strerror(errno));
    exit(1);
  }
}

// The CNI error result on stdout, exit 1.
static void cni_fail(int code, const char *msg, const char *details) {
  fputs("{\"cniVersion\":", stdout);
  put_json_string(stdout, g_version);
  fprintf(stdout, ",\"code\":%d,\"msg\":", code);
  put_json_string(stdout, msg);
  fputs(",\"details\":", stdout);
  put_json_string(stdout, details ? details : "");
  fputs("}\n", stdout);
  fflush(stdout);
  note("%s%s%s", msg, details && *details ? ": " : "", details ? details : "");
  exit(1);
}

__attribute__((format(printf, 3, 4))) static void cni_failf(int code, const char *details, const char *f, ...) {
  char msg[2 * MAX_STR];
  va_list ap;
  va_start(ap, f);
  vsnprintf(msg, sizeof msg, f, ap);
  va_end(ap);
  cni_fail(code, msg, details);
}

// ---------------------------------------------------------------------------------------------------------------
// JSON: a validating recursive-descent scanner over a buffer, plus lookups on spans it has validated.

typedef struct {
  const char *p;
  size_t n;
} span;

typedef struct {
  const char *s;
  const char *end;
  int depth;
} jcur;

static void j_ws(jcur *c) {
  while (c->s < c->end && (*c->s == ' ' || *c->s == '\t' || *c->s == '\n' || *c->s == '\r')) c->s++;
}

static int is_hex(char ch) {
  return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static int is_digit(char ch) { return ch >= '0' && ch <= '9'; }

static int j_value(jcur *c);

static int j_string(jcur *c) {
  if (c->s >= c->end || *c->s != '"') return -1;
  c->s++;
  while (c->s < c->end) {
    unsigned char ch = (unsigned char)*c->s++;
    if (ch == '"') return 0;
    if (ch < 0x20) return -1;
    if (ch != '\\') continue;
    if (c->s >= c->end) return -1;
    char e = *c->s++;
    if (e == 'u') {
      for (int i = 0; i < 4; i++) {
        if (c->s >= c->end || !is_hex(*c->s)) return -1;
        c->s++;
      }
    } else if (e != '"' && e != '\\' && e != '/' && e != 'b' && e != 'f' && e != 'n' && e != 'r' && e != 't') {
      return -1;
    }
  }
  return -1;
}

static int j_digits(jcur *c) {
  if (c->s >= c->end || !is_digit(*c->s)) return -1;
  while (c->s < c->end && is_digit(*c->s)) c->s++;
  return 0;
}

static int j_number(jcur *c) {
  if (c->s < c->end && *c->s == '-') c->s++;
  if (c->s < c->end && *c->s == '0') {
    c->s++;
  } else if (j_digits(c) != 0) {
    return -1;
  }
  if (c->s < c->end && *c->s == '.') {
    c->s++;
    if (j_digits(c) != 0) return -1;
  }
  if (c->s < c->end && (*c->s == 'e' || *c->s == 'E')) {
    c->s++;
    if (c->s < c->end && (*c->s == '+' || *c->s == '-')) c->s++;
    if (j_digits(c) != 0) return -1;
  }
  return 0;
}

static int j_literal(jcur *c, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(c->end - c->s) < n || memcmp(c->s, word, n) != 0) return -1;
  c->s += n;
  return 0;
}

static int j_container(jcur *c, char open, char close) {
  if (++c->depth > MAX_DEPTH) return -1;
  c->s++;  // the opening bracket
  j_ws(c);
  if (c->s < c->end && *c->s == close) {
    c->s++;
    c->depth--;
    return 0;
  }
  for (;;) {
    if (open == '{') {
      if (j_string(c) != 0) return -1;
      j_ws(c);
      if (c->s >= c->end || *c->s != ':') return -1;
      c->s++;
      j_ws(c);
    }
    if (j_value(c) != 0) return -1;
    j_ws(c);
    if (c->s >= c->end) return -1;
    if (*c->s == ',') {
      c->s++;
      j_ws(c);
      continue;
    }
    if (*c->s != close) return -1;
    c->s++;
    c->depth--;
    return 0;
  }
}

static int j_value(jcur *c) {
  if (c->s >= c->end) return -1;
  switch (*c->s) {
    case '{': return j_container(c, '{', '}');
    case '[': return j_container(c, '[', ']');
    case '"': return j_string(c);
    case 't': return j_literal(c, "true");
    case 'f': return j_literal(c, "false");
    case 'n': return j_literal(c, "null");
    default: return j_number(c);
  }
}

// Validates a whole document; on success *out is its top-level value.
static int j_parse(const char *buf, size_t len, span *out) {
  jcur c = {buf, buf + len, 0};
  j_ws(&c);
  const char *start = c.s;
  if (j_value(&c) != 0) return -1;
  out->p = start;
  out->n = (size_t)(c.s - start);
  j_ws(&c);
  return c.s == c.end ? 0 : -1;
}

static void put_utf8(char *out, size_t *o, uint32_t cp) {
  if (cp < 0x80) {
    out[(*o)++] = (char)cp;
  } else if (cp < 0x800) {
    out[(*o)++] = (char)(0xc0 | (cp >> 6));
    out[(*o)++] = (char)(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out[(*o)++] = (char)(0xe0 | (cp >> 12));
    out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[(*o)++] = (char)(0x80 | (cp & 0x3f));
  } else {
    out[(*o)++] = (char)(0xf0 | (cp >> 18));
    out[(*o)++] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[(*o)++] = (char)(0x80 | (cp & 0x3f));
  }
}

static uint32_t hex4(const char *p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    char ch = p[i];
    v = (v << 4) | (uint32_t)(is_digit(ch) ? ch - '0' : (ch | 0x20) - 'a' + 10);
  }
  return v;
}

// Decodes a validated string token (quotes included) into out, NUL-terminated. -1 if it is not a string, does not
// fit, or holds a NUL (which would cut a C string short). Lone surrogates become U+FFFD, as Go's decoder does.
static int j_decode(span tok, char *out, size_t cap) {
  if (tok.n < 2 || tok.p[0] != '"') return -1;
  const char *p = tok.p + 1;
  const char *end = tok.p + tok.n - 1;
  size_t o = 0;
  while (p < end) {
    if (o + 5 >= cap) return -1;
    if (*p != '\\') {
      out[o++] = *p++;
      continue;
    }
    p++;
    char e = *p++;
    switch (e) {
      case 'b': out[o++] = '\b'; break;
      case 'f': out[o++] = '\f'; break;
      case 'n': out[o++] = '\n'; break;
      case 'r': out[o++] = '\r'; break;
      case 't': out[o++] = '\t'; break;
      case 'u': {
        uint32_t cp = hex4(p);
        p += 4;
        if (cp >= 0xd800 && cp < 0xdc00 && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
          uint32_t lo = hex4(p + 2);
          if (lo >= 0xdc00 && lo < 0xe000) {
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            p += 6;
          }
        }
        if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd;
        if (cp == 0) return -1;
        put_utf8(out, &o, cp);
        break;
      }
      default: out[o++] = e; break;  // " \ /
    }
  }
  out[o] = '\0';
  return 0;
}

// The last member named `key` of a validated object (last wins, as in the Go runtimes). 1 found, 0 not.
static int j_get(span obj, const char *key, span *out) {
  if (obj.n == 0 || obj.p[0] != '{') return 0;
  jcur c = {obj.p + 1, obj.p + obj.n, 0};
  int found = 0;
  char name[256];
  for (;;) {
    j_ws(&c);
    if (c.s >= c.end || *c.s == '}') return found;
    const char *ks = c.s;
    if (j_string(&c) != 0) return found;
    span k = {ks, (size_t)(c.s - ks)};
    j_ws(&c);
    c.s++;  // ':'
    j_ws(&c);
    const char *vs = c.s;
    if (j_value(&c) != 0) return found;
    if (j_decode(k, name, sizeof name) == 0 && strcmp(name, key) == 0) {
      out->p = vs;
      out->n = (size_t)(c.s - vs);
      found = 1;
    }
    j_ws(&c);
    if (c.s < c.end && *c.s == ',') c.s++;
  }
}

// Calls fn for each element of a validated array; stops early when fn returns non-zero.
static void j_each(span arr, int (*fn)(span, void *), void *arg) {
  if (arr.n == 0 || arr.p[0] != '[') return;
  jcur c = {arr.p + 1, arr.p + arr.n, 0};
  for (;;) {
    j_ws(&c);
    if (c.s >= c.end || *c.s == ']') return;
    const char *vs = c.s;
    if (j_value(&c) != 0) return;
    if (fn((span){vs, (size_t)(c.s - vs)}, arg) != 0) return;
    j_ws(&c);
    if (c.s < c.end && *c.s == ',') c.s++;
  }
}

// A string member, decoded; 1 found, 0 absent, -1 present but not a string or too long.
static int j_get_string(span obj, const char *key, char *out, size_t cap) {
  span v;
  if (!j_get(obj, key, &v)) return 0;
  return j_decode(v, out, cap) == 0 ? 1 : -1;
}

// ---------------------------------------------------------------------------------------------------------------
// Inputs: the environment the runtime sets and the network configuration on stdin.

typedef struct {
  char command[16];
  char container_id[MAX_STR];
  char netns[MAX_STR];
  char ifname[MAX_STR];
  char ns[MAX_STR];
  char name[MAX_STR];
  char uid[MAX_STR];
  int is_pod;  // CNI_ARGS named a Kubernetes pod
} cni_env;

typedef struct {
  char *raw;
  span doc;
  span prev_result;  // n == 0: none
  char socket[sizeof(((struct sockaddr_un *)0)->sun_path)];
  char optin[MAX_STR];
  long timeout_ms;
  char ips[MAX_IPS][64];
  int nips;
} cni_config;

static void env_copy(const char *var, char *out, size_t cap, int required) {
  const char *v = getenv(var);
  if (v == NULL || *v == '\0') {
    if (required) cni_failf(E_ENV, "", "%s is not set: trellis-cni runs as a CNI plugin, started by the container runtime", var);
    out[0] = '\0';
    return;
  }
  if (strlen(v) >= cap) cni_failf(E_ENV, "", "%s is longer than %zu bytes", var, cap - 1);
  strcpy(out, v);
}

// CNI_ARGS: "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=name;K8S_POD_UID=uid;..."
static void parse_cni_args(cni_env *env) {
  char args[4 * MAX_STR];
  env_copy("CNI_ARGS", args, sizeof args, 0);
  char *save = NULL;
  for (char *kv = strtok_r(args, ";", &save); kv; kv = strtok_r(NULL, ";", &save)) {
    char *eq = strchr(kv, '=');
    if (!eq) continue;
    *eq = '\0';
    const char *v = eq + 1;
    if (strlen(v) >= MAX_STR) continue;
    if (strcmp(kv, "K8S_POD_NAMESPACE") == 0) strcpy(env->ns, v);
    else if (strcmp(kv, "K8S_POD_NAME") == 0) strcpy(env->name, v);
    else if (strcmp(kv, "K8S_POD_UID") == 0) strcpy(env->uid, v);
  }
  env->is_pod = env->ns[0] != '\0' && env->name[0] != '\0';
}

static char *read_stdin(size_t *len) {
  char *buf = malloc(MAX_STDIN + 1);
  if (!buf) cni_fail(E_IO, "out of memory reading the network configuration", "");
  size_t n = 0;
  for (;;) {
    ssize_t r = read(STDIN_FILENO, buf + n, MAX_STDIN + 1 - n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) cni_fail(E_IO, "reading the network configuration from stdin failed", strerror(errno));
    if (r == 0) break;
    n += (size_t)r;
    if (n > MAX_STDIN) cni_failf(E_DECODE, "", "network configuration on stdin is larger than %d bytes", MAX_STDIN);
  }
  *len = n;
  return buf;
}

static int collect_ip(span entry, void *arg) {
  cni_config *cfg = arg;
  char addr[128];
  if (cfg->nips >= MAX_IPS) return 1;
  if (j_get_string(entry, "address", addr, sizeof addr) != 1) return 0;
  char *slash = strchr(addr, '/');
  if (slash) *slash = '\0';
  size_t n = strlen(addr);
  if (n == 0 || n >= sizeof cfg->ips[0]) return 0;
  for (size_t i = 0; i < n; i++) {
    char ch = addr[i];
    if (!is_hex(ch) && ch != '.' && ch != ':') return 0;
  }
  strcpy(cfg->ips[cfg->nips++], addr);
  return 0;
}

static int version_supported(const char *v) {
  for (size_t i = 0; i < NSUPPORTED; i++) if (strcmp(v, SUPPORTED[i]) == 0) return 1;
  return 0;
}

static void parse_config(cni_config *cfg) {
  size_t len = 0;
  cfg->raw = read_stdin(&len);
  if (len == 0) cni_fail(E_DECODE, "no network configuration on stdin", "the runtime passes the plugin's JSON config on stdin");
  if (j_parse(cfg->raw, len, &cfg->doc) != 0) {
    cni_failf(E_DECODE, "", "network configuration on stdin is not valid JSON (or nests deeper than %d levels)", MAX_DEPTH);
  }
  if (cfg->doc.p[0] != '{') cni_fail(E_DECODE, "network configuration on stdin is not a JSON object", "");

  char version[32];
  int r = j_get_string(cfg->doc, "cniVersion", version, sizeof version);
  if (r != 1) cni_fail(E_CONFIG, "network configuration has no string \"cniVersion\"", "");
  if (!version_supported(version)) {
    cni_failf(E_VERSION, "supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0", "CNI version %s is not supported by trellis-cni", version);
  }
  strcpy(g_version, version);

  r = j_get_string(cfg->doc, "socket", cfg->socket, sizeof cfg->socket);
  if (r < 0) cni_failf(E_CONFIG, "", "\"socket\" must be a path shorter than %zu bytes", sizeof cfg->socket);
  if (r == 0) strcpy(cfg->socket, DEFAULT_SOCKET);

  r = j_get_string(cfg->doc, "optin_file", cfg->optin, sizeof cfg->optin);
  if (r < 0) cni_fail(E_CONFIG, "\"optin_file\" must be a string path", "");
  if (r == 0) strcpy(cfg->optin, DEFAULT_OPTIN);

  cfg->timeout_ms = DEFAULT_TIMEOUT_MS;
  span t;
  if (j_get(cfg->doc, "timeout_ms", &t)) {
    long v = 0;
    int ok = t.n > 0 && t.n <= 7;
    for (size_t i = 0; ok && i < t.n; i++) {
      if (!is_digit(t.p[i])) ok = 0;
      else v = v * 10 + (t.p[i] - '0');
    }
    if (!ok || v < 1 || v > MAX_TIMEOUT_MS) cni_failf(E_CONFIG, "", "\"timeout_ms\" must be an integer from 1 to %d", MAX_TIMEOUT_MS);
    cfg->timeout_ms = v;
  }

  cfg->prev_result.n = 0;
  span prev;
  if (j_get(cfg->doc, "prevResult", &prev) && prev.p[0] == '{') {
    cfg->prev_result = prev;
    span ips;
    if (j_get(prev, "ips", &ips) && ips.p[0] == '[') j_each(ips, collect_ip, cfg);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The agent: one JSON line each way over its Unix socket, within the deadline.

typedef enum { AGENT_OK, AGENT_REFUSED, AGENT_UNREACHABLE } agent_outcome;

typedef struct {
  agent_outcome outcome;
  char action[64];
  char why[2 * MAX_STR];  // AGENT_REFUSED: the agent's error; AGENT_UNREACHABLE: what failed
} agent_reply;

typedef struct {
  char buf[MAX_REQUEST];
  size_t n;
  int overflow;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n) {
  if (b->overflow || b->n + n >= sizeof b->buf) {
    b->overflow = 1;
    return;
  }
  memcpy(b->buf + b->n, s, n);
  b->n += n;
}

static void sb_str(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_json(strbuf *b, const char *s) {
  sb_put(b, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    char esc[8];
    if (*p == '"' || *p == '\\') {
      esc[0] = '\\';
      esc[1] = (char)*p;
      sb_put(b, esc, 2);
    } else if (*p < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", *p);
      sb_put(b, esc, 6);
    } else if (*p >= 0x80) {
      size_t n = utf8_len(p);
      if (n == 0) {
        sb_str(b, "\\ufffd");
      } else {
        sb_put(b, (const char *)p, n);
        p += n - 1;
      }
    } else {
      sb_put(b, (const char *)p, 1);
    }
  }
  sb_put(b, "\"", 1);
}

static void sb_field(strbuf *b, const char *key, const char *value) {
  sb_str(b, ",");
  sb_json(b, key);
  sb_str(b, ":");
  sb_json(b, value);
}

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

__attribute__((format(printf, 2, 3))) static void unreachable(agent_reply *r, const char *f, ...) {
  va_list ap;
  va_start(ap, f);
  vsnprintf(r->why, sizeof r->why, f, ap);
  va_end(ap);
  r->outcome = AGENT_UNREACHABLE;
}

// Waits for `events` on fd until the deadline; 1 ready, 0 timed out, -1 error.
static int wait_fd(int fd, short events, long deadline) {
  for (;;) {
    long left = deadline - now_ms();
    if (left <= 0) return 0;
    struct pollfd p = {.fd = fd, .events = events};
    int r = poll(&p, 1, (int)left);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) return 0;
    return 1;
  }
}

static void ask_agent(const cni_config *cfg, const cni_env *env, agent_reply *reply) {
  memset(reply, 0, sizeof *reply);
  long deadline = now_ms() + cfg->timeout_ms;

  strbuf *req = calloc(1, sizeof *req);
  if (!req) cni_fail(E_IO, "out of memory building the agent request", "");
  sb_str(req, "{\"cmd\":");
  sb_json(req, env->command);
  sb_field(req, "containerId", env->container_id);
  sb_field(req, "netns", env->netns);
  sb_field(req, "ifname", env->ifname);
  sb_field(req, "namespace", env->ns);
  sb_field(req, "name", env->name);
  sb_field(req, "uid", env->uid);
  sb_str(req, ",\"ips\":[");
  for (int i = 0; i < cfg->nips; i++) {
    if (i) sb_str(req, ",");
    sb_json(req, cfg->ips[i]);
  }
  char tail[64];
  snprintf(tail, sizeof tail, "],\"timeoutMs\":%ld}\n", cfg->timeout_ms);
  sb_str(req, tail);
  if (req->overflow) cni_fail(E_IO, "request to the trellis agent is too large", "");

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    unreachable(reply, "socket: %s", strerror(errno));
    free(req);
    return;
  }
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  strcpy(addr.sun_path, cfg->socket);
  // A Unix connect either completes at once or fails; EAGAIN means the agent's backlog is full: retry briefly.
  while (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    if ((errno == EAGAIN || errno == EINTR) && now_ms() < deadline) {
      usleep(10000);
      continue;
    }
    unreachable(reply, "connect: %s", strerror(errno));
    goto out;
  }

  size_t sent = 0;
  while (sent < req->n) {
    ssize_t w = send(fd, req->buf + sent, req->n - sent, MSG_NOSIGNAL);
    if (w > 0) {
      sent += (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EAGAIN) {
      int ready = wait_fd(fd, POLLOUT, deadline);
      if (ready > 0) continue;
      if (ready == 0) unreachable(reply, "the agent did not take the request within %ld ms", cfg->timeout_ms);
      else unreachable(reply, "poll: %s", strerror(errno));
      goto out;
    }
    unreachable(reply, "send: %s", strerror(errno));
    goto out;
  }

  char *buf = malloc(MAX_REPLY + 1);
  if (!buf) cni_fail(E_IO, "out of memory reading the agent's reply", "");
  size_t n = 0;
  char *nl = NULL;
  while (!nl) {
    ssize_t r = recv(fd, buf + n, MAX_REPLY - n, 0);
    if (r > 0) {
      nl = memchr(buf + n, '\n', (size_t)r);
      n += (size_t)r;
      if (!nl && n >= MAX_REPLY) {
        unreachable(reply, "the agent's reply is longer than %d bytes", MAX_REPLY);
        free(buf);
        goto out;
      }
      continue;
    }
    if (r == 0) {
      unreachable(reply, "the agent closed the connection without answering (agent stopping?)");
      free(buf);
      goto out;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      int ready = wait_fd(fd, POLLIN, deadline);
      if (ready > 0) continue;
      if (ready == 0) unreachable(reply, "the agent did not answer within %ld ms", cfg->timeout_ms);
      else unreachable(reply, "poll: %s", strerror(errno));
      free(buf);
      goto out;
    }
    unreachable(reply, "recv: %s", strerror(errno));
    free(buf);
    goto out;
  }

  span doc;
  span ok;
  if (j_parse(buf, (size_t)(nl - buf), &doc) != 0 || doc.p[0] != '{' || !j_get(doc, "ok", &ok)) {
    unreachable(reply, "the agent's reply is not the expected JSON line");
  } else if (ok.n == 4 && memcmp(ok.p, "true", 4) == 0) {
    reply->outcome = AGENT_OK;
    if (j_get_string(doc, "action", reply->action, sizeof reply->action) != 1) strcpy(reply->action, "");
  } else if (ok.n != 5 || memcmp(ok.p, "false", 5) != 0) {
    unreachable(reply, "the agent's reply has no boolean \"ok\"");
  } else {
    reply->outcome = AGENT_REFUSED;
    if (j_get_string(doc, "error", reply->why, sizeof reply->why) != 1) strcpy(reply->why, "no reason given");
  }
  free(buf);
out:
  close(fd);
  free(req);
}

// ---------------------------------------------------------------------------------------------------------------
// The opt-in file the agent keeps for when it is down. Lines: "namespace NS" (mesh enabled on the namespace) and
// "pod NS/NAME enabled|disabled" (pod-level annotation, which wins).

typedef enum { OPTIN_NOT_MESHED, OPTIN_MESHED, OPTIN_NO_FILE, OPTIN_UNREADABLE } optin_verdict;

static optin_verdict optin_lookup(const char *path, const cni_env *env, char *why, size_t cap) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fmt(why, cap, "%s: %s", path, strerror(errno));
    return errno == ENOENT ? OPTIN_NO_FILE : OPTIN_UNREADABLE;
  }
  char *buf = malloc(MAX_OPTIN + 1);
  if (!buf) {
    close(fd);
    fmt(why, cap, "out of memory reading %s", path);
    return OPTIN_UNREADABLE;
  }
  size_t n = 0;
  for (;;) {
    ssize_t r = read(fd, buf + n, MAX_OPTIN - n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      fmt(why, cap, "%s: %s", path, strerror(errno));
      close(fd);
      free(buf);
      return OPTIN_UNREADABLE;
    }
    if (r == 0 || (n += (size_t)r) >= MAX_OPTIN) break;
  }
  close(fd);
  buf[n] = '\0';

  char pod[2 * MAX_STR + 2];
  fmt(pod, sizeof pod, "%s/%s", env->ns, env->name);
  int ns_meshed = 0;
  int pod_mode = -1;  // -1 unknown, 0 disabled, 1 enabled
  char *save = NULL;
  for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    size_t len = strlen(line);
    if (len && line[len - 1] == '\r') line[--len] = '\0';
    if (strncmp(line, "namespace ", 10) == 0 && strcmp(line + 10, env->ns) == 0) {
      ns_meshed = 1;
    } else if (strncmp(line, "pod ", 4) == 0) {
      char *mode = strrchr(line + 4, ' ');
      if (!mode) continue;
      *mode++ = '\0';
      if (strcmp(line + 4, pod) != 0) continue;
      if (strcmp(mode, "enabled") == 0) pod_mode = 1;
      else if (strcmp(mode, "disabled") == 0) pod_mode = 0;
    }
  }
  free(buf);
  if (pod_mode == 1) fmt(why, cap, "%s lists pod %s as enabled", path, pod);
  else if (pod_mode == 0) fmt(why, cap, "%s lists pod %s as disabled", path, pod);
  else if (ns_meshed) fmt(why, cap, "%s lists namespace %s as meshed", path, env->ns);
  else fmt(why, cap, "%s does not list pod %s or its namespace", path, pod);
  if (pod_mode >= 0) return pod_mode ? OPTIN_MESHED : OPTIN_NOT_MESHED;
  return ns_meshed ? OPTIN_MESHED : OPTIN_NOT_MESHED;
}

// ---------------------------------------------------------------------------------------------------------------
// Commands

static void print_prev_result(const cni_config *cfg) {
  fwrite(cfg->prev_result.p, 1, cfg->prev_result.n, stdout);
  fputc('\n', stdout);
  flush_or_die();
}

// The agent cannot say: fail if the pod is meshed per the opt-in file (it must not start outside the mesh), else pass.
static void decide_without_agent(const cni_config *cfg, const cni_env *env, const agent_reply *reply) {
  char why[3 * MAX_STR];
  optin_verdict v = optin_lookup(cfg->optin, env, why, sizeof why);
  char details[8 * MAX_STR];
  fmt(details, sizeof details, "%s; %s", reply->why, why);
  if (v == OPTIN_MESHED) {
    cni_failf(E_TRY_AGAIN, details,
              "trellis agent unreachable at %s: pod %s/%s is meshed and cannot start without traffic capture",
              cfg->socket, env->ns, env->name);
  }
  if (v == OPTIN_UNREADABLE) {
    cni_failf(E_TRY_AGAIN, details,
              "trellis agent unreachable at %s and its opt-in file unreadable: cannot tell whether pod %s/%s is meshed",
              cfg->socket, env->ns, env->name);
  }
  note("agent unreachable at %s (%s); pod %s/%s is not meshed per the opt-in file (%s): letting it start", cfg->socket,
       reply->why, env->ns, env->name, v == OPTIN_NO_FILE ? "no opt-in file" : why);
}

static void cmd_add(cni_config *cfg, cni_env *env) {
  if (cfg->prev_result.n == 0) {
    cni_fail(E_CONFIG, "trellis-cni must be chained after the pod network plugin: the config has no \"prevResult\"",
             "add it to the end of the \"plugins\" list of the node's CNI conflist");
  }
  if (!env->is_pod) {
    note("CNI_ARGS names no Kubernetes pod (K8S_POD_NAMESPACE, K8S_POD_NAME): nothing to capture");
    print_prev_result(cfg);
    return;
  }
  agent_reply reply;
  ask_agent(cfg, env, &reply);
  if (reply.outcome == AGENT_REFUSED) {
    cni_failf(E_AGENT, reply.why, "trellis agent could not enrol pod %s/%s", env->ns, env->name);
  }
  if (reply.outcome == AGENT_UNREACHABLE) decide_without_agent(cfg, env, &reply);
  print_prev_result(cfg);
}

static void cmd_del(cni_config *cfg, cni_env *env) {
  if (!env->is_pod) return;
  agent_reply reply;
  ask_agent(cfg, env, &reply);
  // DEL must succeed for the runtime to finish tearing the pod down; the agent also unenrols pods that leave its state.
  if (reply.outcome == AGENT_UNREACHABLE) note("DEL of pod %s/%s: agent unreachable at %s (%s); nothing to undo here", env->ns, env->name, cfg->socket, reply.why);
  if (reply.outcome == AGENT_REFUSED) note("DEL of pod %s/%s: the agent answered: %s", env->ns, env->name, reply.why);
}

static void cmd_check(cni_config *cfg, cni_env *env) {
  if (!env->is_pod) return;
  agent_reply reply;
  ask_agent(cfg, env, &reply);
  if (reply.outcome == AGENT_REFUSED) cni_failf(E_AGENT, reply.why, "pod %s/%s: traffic capture is not in place", env->ns, env->name);
  if (reply.outcome == AGENT_UNREACHABLE) decide_without_agent(cfg, env, &reply);
}

int main(void) {
  cni_env *env = calloc(1, sizeof *env);
  cni_config *cfg = calloc(1, sizeof *cfg);
  if (!env || !cfg) cni_fail(E_IO, "out of memory", "");

  env_copy("CNI_COMMAND", env->command, sizeof env->command, 1);
  if (strcmp(env->command, "VERSION") == 0) {
    fputs("{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[", stdout);
    for (size_t i = 0; i < NSUPPORTED; i++) fprintf(stdout, "%s\"%s\"", i ? "," : "", SUPPORTED[i]);
    fputs("]}\n", stdout);
    flush_or_die();
    return 0;
  }
  int add = strcmp(env->command, "ADD") == 0;
  int del = strcmp(env->command, "DEL") == 0;
  int check = strcmp(env->command, "CHECK") == 0;
  int other = strcmp(env->command, "GC") == 0 || strcmp(env->command, "STATUS") == 0;
  if (!add && !del && !check && !other) {
    cni_failf(E_ENV, "expected ADD, DEL, CHECK, VERSION, GC or STATUS", "unknown CNI_COMMAND \"%s\"", env->command);
  }

  parse_config(cfg);
  // GC: nothing of ours outlives a pod the agent does not know. STATUS: pods can be added whether or not the agent is up.
  if (other) return 0;

  env_copy("CNI_CONTAINERID", env->container_id, sizeof env->container_id, 1);
  env_copy("CNI_IFNAME", env->ifname, sizeof env->ifname, 1);
  // DEL may come after the network namespace is gone.
  env_copy("CNI_NETNS", env->netns, sizeof env->netns, !del);
  parse_cni_args(env);

  if (add) cmd_add(cfg, env);
  else if (del) cmd_del(cfg, env);
  else cmd_check(cfg, env);
  return 0;
}
