// The eBPF half of the addon, under capture/: probes what the kernel offers, loads the inbound sk_lookup program
// (native/bpf/sk_lookup.bpf.c, embedded here as a libbpf skeleton) and attaches it to a pod's network namespace, and
// the sockops program that keeps RTT and retransmissions of the agent's own sockets (native/bpf/tcp_health.bpf.c),
// attached to the agent's cgroup, the outbound programs (native/bpf/outbound.bpf.c) on the cgroup root, and the
// same-node splice's stream verdict on its sockhash (native/bpf/same_node.bpf.c).
// Every program, map and link is held by a file descriptor of this process: nothing is pinned, so all of it goes
// when the handle is closed or the agent exits. libbpf is linked dynamically (native/build.mjs says why).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <linux/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/types.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include "bpf.h"
#include "common.h"
#include "sk_lookup.h"
#include "sk_lookup.skel.h"
#include "tcp_health.h"
#include "tcp_health.skel.h"
#include "outbound.h"
#include "outbound.skel.h"
#include "same_node.h"
#include "same_node.skel.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

// libbpf's warnings (the verifier's log among them) are kept rather than printed on the agent's stderr: the tail of
// what the last failed call said goes into its error. Per thread, as each Node thread has its own calls.
#define LOG_KEEP 8192
static __thread char libbpf_log[LOG_KEEP];
static __thread size_t libbpf_log_len;

static void log_reset(void) {
  libbpf_log_len = 0;
  libbpf_log[0] = '\0';
}

static void log_append(const char *text, size_t len) {
  if (len >= LOG_KEEP) {
    text += len - (LOG_KEEP - 1);
    len = LOG_KEEP - 1;
  }
  if (libbpf_log_len + len >= LOG_KEEP) {
    // The end says why (the verifier's last lines): the start goes.
    size_t drop = libbpf_log_len + len - (LOG_KEEP - 1);
    memmove(libbpf_log, libbpf_log + drop, libbpf_log_len - drop);
    libbpf_log_len -= drop;
  }
  memcpy(libbpf_log + libbpf_log_len, text, len);
  libbpf_log_len += len;
  libbpf_log[libbpf_log_len] = '\0';
}

static int keep_libbpf_message(enum libbpf_print_level level, const char *fmt, va_list args) {
  if (level == LIBBPF_DEBUG) return 0;
  va_list copy;
  va_copy(copy, args);
  int n = vsnprintf(NULL, 0, fmt, copy);
  va_end(copy);
  if (n <= 0) return 0;
  char *text = malloc((size_t)n + 1);
  if (text == NULL) return 0;
  vsnprintf(text, (size_t)n + 1, fmt, args);
  log_append(text, (size_t)n);
  free(text);
  return 0;
}

// A failed BPF step: `stage` says which (open, load, map, attach), `what` the message's subject.
static napi_value throw_bpf(napi_env env, int err, const char *syscall, const char *stage, const char *what) {
  char message[PATH_MAX + 256];
  snprintf(message, sizeof message, "%s: %s", what, strerror(err));
  napi_value code, msg, error, err_no, js_syscall, js_stage, log;
  NAPI_CALL(env, napi_create_string_utf8(env, errno_name(err), NAPI_AUTO_LENGTH, &code));
  NAPI_CALL(env, napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg));
  NAPI_CALL(env, napi_create_error(env, code, msg, &error));
  NAPI_CALL(env, napi_create_int32(env, err, &err_no));
  NAPI_CALL(env, napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &js_syscall));
  NAPI_CALL(env, napi_create_string_utf8(env, stage, NAPI_AUTO_LENGTH, &js_stage));
  NAPI_CALL(env, napi_create_string_utf8(env, libbpf_log, libbpf_log_len, &log));
  NAPI_CALL(env, napi_set_named_property(env, error, "errno", err_no));
  NAPI_CALL(env, napi_set_named_property(env, error, "syscall", js_syscall));
  NAPI_CALL(env, napi_set_named_property(env, error, "stage", js_stage));
  NAPI_CALL(env, napi_set_named_property(env, error, "log", log));
  NAPI_CALL(env, napi_throw(env, error));
  return NULL;
}

// libbpf returns -errno and sets errno, or NULL with errno set; either way a positive errno, never 0.
static int last_errno(int ret) {
  int err = ret < 0 ? -ret : errno;
  return err > 0 ? err : EINVAL;
}

static bool set_number(napi_env env, napi_value obj, const char *name, double value) {
  napi_value v;
  NAPI_CALL_BOOL(env, napi_create_double(env, value, &v));
  NAPI_CALL_BOOL(env, napi_set_named_property(env, obj, name, v));
  return true;
}

static bool set_string(napi_env env, napi_value obj, const char *name, const char *value) {
  napi_value v;
  NAPI_CALL_BOOL(env, napi_create_string_utf8(env, value, NAPI_AUTO_LENGTH, &v));
  NAPI_CALL_BOOL(env, napi_set_named_property(env, obj, name, v));
  return true;
}

// A loaded skeleton as the JS side holds it: an external tagged with its kind, released once, by its close or by the
// garbage collector when the JS side dropped it without closing (rather than kept for the life of the agent). Every
// handle struct starts with its skeleton's pointer, NULL once released: that is what "closed" means below.
typedef struct {
  napi_type_tag tag;
  // In errors: "not <a_name> handle", "the <name> handle is closed".
  const char *a_name;
  const char *name;
  void (*release)(void *handle);
} handle_kind;

static void handle_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  ((const handle_kind *)hint)->release(data);
  free(data);
}

// `h` (from malloc) for the JS side; on failure it is released and freed, and the exception is pending.
static napi_value handle_wrap(napi_env env, void *h, const handle_kind *kind) {
  napi_value result;
  napi_status status = napi_create_external(env, h, handle_finalize, (void *)kind, &result);
  if (status != napi_ok) {
    kind->release(h);
    free(h);
    NAPI_CALL(env, status);
  }
  NAPI_CALL(env, napi_type_tag_object(env, result, &kind->tag));
  return result;
}

// The handle behind `value`; NULL with a TypeError when it is not one of `kind`, or an ECLOSED error when `open` is
// asked for and it was released.
static void *handle_arg(napi_env env, napi_value value, const handle_kind *kind, bool open) {
  bool tagged = false;
  napi_valuetype type;
  NAPI_CALL(env, napi_typeof(env, value, &type));
  if (type == napi_external) NAPI_CALL(env, napi_check_object_type_tag(env, value, &kind->tag, &tagged));
  char message[96];
  if (!tagged) {
    snprintf(message, sizeof message, "not %s handle", kind->a_name);
    napi_throw_type_error(env, "EINVAL", message);
    return NULL;
  }
  void *data = NULL;
  NAPI_CALL(env, napi_get_value_external(env, value, &data));
  if (open && *(void **)data == NULL) {
    snprintf(message, sizeof message, "the %s handle is closed", kind->name);
    napi_throw_error(env, "ECLOSED", message);
    return NULL;
  }
  return data;
}

// The per-CPU verdict counters of `map` (keys 0 to count - 1), each summed over the CPUs, as a JS array.
static napi_value verdict_sums(napi_env env, const struct bpf_map *map, __u32 count) {
  int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) return throw_bpf(env, last_errno(cpus), "libbpf_num_possible_cpus", "map", "count the CPUs");
  __u64 *values = calloc((size_t)cpus, sizeof *values);
  if (values == NULL) return throw_bpf(env, ENOMEM, "calloc", "map", "read the verdict counters");
  napi_value result;
  napi_status status = napi_create_array_with_length(env, count, &result);
  for (__u32 key = 0; status == napi_ok && key < count; key++) {
    int rc = bpf_map__lookup_elem(map, &key, sizeof key, values, (size_t)cpus * sizeof *values, 0);
    if (rc != 0) {
      free(values);
      return throw_bpf(env, last_errno(rc), "bpf(BPF_MAP_LOOKUP_ELEM)", "map", "read the verdict counters");
    }
    double sum = 0;
    for (int cpu = 0; cpu < cpus; cpu++) sum += (double)values[cpu];
    napi_value n;
    status = napi_create_double(env, sum, &n);
    if (status == napi_ok) status = napi_set_element(env, result, key, n);
  }
  free(values);
  NAPI_CALL(env, status);
  return result;
}

// 1 when struct bpf_sk_lookup of the running kernel has ingress_ifindex (Linux 5.17+), 0 when not, -errno when the
// kernel's BTF cannot be read.
static int sk_lookup_has_ifindex(void) {
  struct btf *btf = btf__load_vmlinux_btf();
  if (btf == NULL) return -last_errno(0);
  int found = 0;
  __s32 id = btf__find_by_name_kind(btf, "bpf_sk_lookup", BTF_KIND_STRUCT);
  if (id > 0) {
    const struct btf_type *t = btf__type_by_id(btf, (__u32)id);
    const struct btf_member *m = btf_members(t);
    for (__u16 i = 0; i < btf_vlen(t); i++, m++) {
      const char *name = btf__name_by_offset(btf, m->name_off);
      if (name != NULL && strcmp(name, "ingress_ifindex") == 0) found = 1;
    }
  }
  btf__free(btf);
  return found;
}

// bpfProbe() -> what this kernel offers, each answer 1 (yes), 0 (no) or -errno (could not tell, e.g. -EPERM), and
// whether Trellis's own sk_lookup program loads (open, CO-RE relocation, verifier), with the reason if not.
static napi_value js_bpf_probe(napi_env env, napi_callback_info info) {
  (void)info;
  log_reset();
  napi_value result, prog_types, map_types, program;
  NAPI_CALL(env, napi_create_object(env, &result));
  NAPI_CALL(env, napi_create_object(env, &prog_types));
  NAPI_CALL(env, napi_create_object(env, &map_types));
  NAPI_CALL(env, napi_create_object(env, &program));
  struct { const char *name; enum bpf_prog_type type; } progs[] = {
    {"sk_lookup", BPF_PROG_TYPE_SK_LOOKUP},
    {"cgroup_sock_addr", BPF_PROG_TYPE_CGROUP_SOCK_ADDR},
    {"sock_ops", BPF_PROG_TYPE_SOCK_OPS},
    {"sk_skb", BPF_PROG_TYPE_SK_SKB},
  };
  for (size_t i = 0; i < sizeof progs / sizeof progs[0]; i++) {
    if (!set_number(env, prog_types, progs[i].name, libbpf_probe_bpf_prog_type(progs[i].type, NULL))) return NULL;
  }
  struct { const char *name; enum bpf_map_type type; } maps[] = {
    {"sockmap", BPF_MAP_TYPE_SOCKMAP},
    {"sockhash", BPF_MAP_TYPE_SOCKHASH},
  };
  for (size_t i = 0; i < sizeof maps / sizeof maps[0]; i++) {
    if (!set_number(env, map_types, maps[i].name, libbpf_probe_bpf_map_type(maps[i].type, NULL))) return NULL;
  }
  NAPI_CALL(env, napi_set_named_property(env, result, "progTypes", prog_types));
  NAPI_CALL(env, napi_set_named_property(env, result, "mapTypes", map_types));

  struct btf *btf = btf__load_vmlinux_btf();
  int btf_ok = btf != NULL ? 1 : -last_errno(0);
  btf__free(btf);
  if (!set_number(env, result, "btf", btf_ok)) return NULL;
  if (!set_number(env, result, "skLookupIfindex", sk_lookup_has_ifindex())) return NULL;

  // The real thing, loaded and thrown away: CO-RE relocations against this kernel's BTF and the verifier's verdict.
  log_reset();
  struct trellis_sk_lookup *skel = trellis_sk_lookup__open();
  int err = 0;
  const char *stage = "open";
  if (skel == NULL) {
    err = last_errno(0);
  } else {
    stage = "load";
    int rc = trellis_sk_lookup__load(skel);
    if (rc != 0) err = last_errno(rc);
    trellis_sk_lookup__destroy(skel);
  }
  napi_value ok;
  NAPI_CALL(env, napi_get_boolean(env, err == 0, &ok));
  NAPI_CALL(env, napi_set_named_property(env, program, "ok", ok));
  if (err != 0) {
    if (!set_number(env, program, "errno", err)) return NULL;
    if (!set_string(env, program, "code", errno_name(err))) return NULL;
    if (!set_string(env, program, "stage", stage)) return NULL;
    if (!set_string(env, program, "message", strerror(err))) return NULL;
    if (!set_string(env, program, "log", libbpf_log)) return NULL;
  }
  NAPI_CALL(env, napi_set_named_property(env, result, "program", program));

  // The outbound programs, loaded and thrown away: connect4/6 and getpeername4/6 hooks (Linux 5.8+), the netns cookie
  // helper (5.7+), sockops.
  napi_value outbound;
  NAPI_CALL(env, napi_create_object(env, &outbound));
  log_reset();
  struct trellis_outbound *out = trellis_outbound__open();
  err = 0;
  stage = "open";
  if (out == NULL) {
    err = last_errno(0);
  } else {
    stage = "load";
    int rc = trellis_outbound__load(out);
    if (rc != 0) err = last_errno(rc);
    trellis_outbound__destroy(out);
  }
  NAPI_CALL(env, napi_get_boolean(env, err == 0, &ok));
  NAPI_CALL(env, napi_set_named_property(env, outbound, "ok", ok));
  if (err != 0) {
    if (!set_number(env, outbound, "errno", err)) return NULL;
    if (!set_string(env, outbound, "code", errno_name(err))) return NULL;
    if (!set_string(env, outbound, "stage", stage)) return NULL;
    if (!set_string(env, outbound, "message", strerror(err))) return NULL;
    if (!set_string(env, outbound, "log", libbpf_log)) return NULL;
  }
  NAPI_CALL(env, napi_set_named_property(env, result, "outboundProgram", outbound));

  // SO_NETNS_COOKIE (Linux 5.14+): how the agent learns a pod's netns cookie.
  int probe_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int netns_cookie = -EINVAL;
  if (probe_fd < 0) {
    netns_cookie = -errno;
  } else {
    __u64 cookie = 0;
    socklen_t len = sizeof cookie;
    netns_cookie = getsockopt(probe_fd, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) == 0 ? 1 : (errno == ENOPROTOOPT ? 0 : -errno);
    close(probe_fd);
  }
  if (!set_number(env, result, "netnsCookie", netns_cookie)) return NULL;
  log_reset();
  return result;
}

// One pod's inbound program: its object (program and maps) and its link to the pod's netns.
typedef struct {
  struct trellis_sk_lookup *skel;
  struct bpf_link *link;
} sk_lookup_handle;

static void sk_lookup_release(void *data) {
  sk_lookup_handle *h = data;
  bpf_link__destroy(h->link);
  h->link = NULL;
  trellis_sk_lookup__destroy(h->skel);
  h->skel = NULL;
}

static const handle_kind SK_LOOKUP = {{0x7472656c6c697362ULL, 0x736b6c6f6f6b7570ULL}, "an sk_lookup", "sk_lookup", sk_lookup_release};

static int put_listener(sk_lookup_handle *h, uint32_t fd) {
  __u32 key = 0;
  __u64 value = fd;
  return bpf_map__update_elem(h->skel->maps.listener, &key, sizeof key, &value, sizeof value, BPF_ANY);
}

// Reads the JS array at argv into up to `max` strings of at most `size` bytes each.
static bool arg_string_array(napi_env env, napi_value value, const char *name, char (*out)[INET6_ADDRSTRLEN], uint32_t max, uint32_t *count) {
  bool is_array = false;
  NAPI_CALL_BOOL(env, napi_is_array(env, value, &is_array));
  if (!is_array) {
    char message[96];
    snprintf(message, sizeof message, "%s must be an array", name);
    napi_throw_type_error(env, "EINVAL", message);
    return false;
  }
  NAPI_CALL_BOOL(env, napi_get_array_length(env, value, count));
  if (*count > max) {
    char message[96];
    snprintf(message, sizeof message, "%s: at most %u", name, max);
    napi_throw_range_error(env, "EINVAL", message);
    return false;
  }
  for (uint32_t i = 0; i < *count; i++) {
    napi_value item;
    NAPI_CALL_BOOL(env, napi_get_element(env, value, i, &item));
    if (!arg_string(env, item, name, out[i], INET6_ADDRSTRLEN)) return false;
  }
  return true;
}

// skLookupAttach(nsPath, listenerFd, probeSources, exemptPorts) -> handle
// Loads a fresh copy of the program (its settings are read-only data, fixed at load), puts the listener in its
// map, and links it to the netns at nsPath. On failure nothing stays behind.
static napi_value js_sk_lookup_attach(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 4, "skLookupAttach");
  char ns_path[PATH_MAX];
  uint32_t listener_fd, source_count, port_count;
  char sources[2 * TRELLIS_MAX_PROBE_SOURCES][INET6_ADDRSTRLEN];
  if (!arg_string(env, argv[0], "nsPath", ns_path, sizeof ns_path)) return NULL;
  if (!arg_uint32(env, argv[1], "listenerFd", &listener_fd)) return NULL;
  if (!arg_string_array(env, argv[2], "probeSources", sources, 2 * TRELLIS_MAX_PROBE_SOURCES, &source_count)) return NULL;
  NAPI_CALL(env, napi_get_array_length(env, argv[3], &port_count));
  if (port_count > TRELLIS_MAX_EXEMPT_PORTS) {
    napi_throw_range_error(env, "EINVAL", "exemptPorts: too many");
    return NULL;
  }

  struct trellis_sk_lookup_config settings;
  memset(&settings, 0, sizeof settings);
  for (uint32_t i = 0; i < source_count; i++) {
    if (settings.probe4_count < TRELLIS_MAX_PROBE_SOURCES && inet_pton(AF_INET, sources[i], &settings.probe4[settings.probe4_count]) == 1) {
      settings.probe4_count++;
    } else if (settings.probe6_count < TRELLIS_MAX_PROBE_SOURCES && inet_pton(AF_INET6, sources[i], settings.probe6[settings.probe6_count]) == 1) {
      settings.probe6_count++;
    } else {
      char message[INET6_ADDRSTRLEN + 96];
      snprintf(message, sizeof message, "probeSources: %s is not an IP address, or more than %d of its family", sources[i], TRELLIS_MAX_PROBE_SOURCES);
      napi_throw_range_error(env, "EINVAL", message);
      return NULL;
    }
  }
  for (uint32_t i = 0; i < port_count; i++) {
    napi_value item;
    uint32_t port;
    NAPI_CALL(env, napi_get_element(env, argv[3], i, &item));
    if (!arg_uint32(env, item, "exemptPorts[]", &port)) return NULL;
    if (port == 0 || port > 65535) {
      napi_throw_range_error(env, "EINVAL", "exemptPorts: ports are 1 to 65535");
      return NULL;
    }
    settings.exempt_ports[settings.exempt_port_count++] = port;
  }

  sk_lookup_handle *h = calloc(1, sizeof *h);
  if (h == NULL) return throw_bpf(env, ENOMEM, "calloc", "open", "sk_lookup handle");
  log_reset();
  char what[PATH_MAX + 64];
  h->skel = trellis_sk_lookup__open();
  if (h->skel == NULL) {
    int err = last_errno(0);
    free(h);
    return throw_bpf(env, err, "bpf_object__open", "open", "open the embedded object");
  }
  h->skel->rodata->settings = settings;
  int rc = trellis_sk_lookup__load(h->skel);
  if (rc != 0) {
    int err = last_errno(rc);
    sk_lookup_release(h);
    free(h);
    return throw_bpf(env, err, "bpf(BPF_PROG_LOAD)", "load", "load");
  }
  rc = put_listener(h, listener_fd);
  if (rc != 0) {
    int err = last_errno(rc);
    sk_lookup_release(h);
    free(h);
    snprintf(what, sizeof what, "put the listener (fd %u) in its sockmap", listener_fd);
    return throw_bpf(env, err, "bpf(BPF_MAP_UPDATE_ELEM)", "map", what);
  }
  int ns_fd = open(ns_path, O_RDONLY | O_CLOEXEC);
  if (ns_fd < 0) {
    int err = errno;
    sk_lookup_release(h);
    free(h);
    snprintf(what, sizeof what, "open %s", ns_path);
    return throw_bpf(env, err, "open", "attach", what);
  }
  h->link = bpf_program__attach_netns(h->skel->progs.trellis_inbound, ns_fd);
  int attach_errno = errno;
  close(ns_fd);
  if (h->link == NULL) {
    sk_lookup_release(h);
    free(h);
    snprintf(what, sizeof what, "attach to the netns %s", ns_path);
    return throw_bpf(env, attach_errno > 0 ? attach_errno : EINVAL, "bpf(BPF_LINK_CREATE)", "attach", what);
  }
  log_reset();

  return handle_wrap(env, h, &SK_LOOKUP);
}

// skLookupSetListener(handle, fd): the pod's listener was reopened; the program hands connections to the new one.
static napi_value js_sk_lookup_set_listener(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 2, "skLookupSetListener");
  sk_lookup_handle *h = handle_arg(env, argv[0], &SK_LOOKUP, true);
  if (h == NULL) return NULL;
  uint32_t fd;
  if (!arg_uint32(env, argv[1], "listenerFd", &fd)) return NULL;
  log_reset();
  int rc = put_listener(h, fd);
  if (rc != 0) {
    char what[64];
    snprintf(what, sizeof what, "put the listener (fd %u) in its sockmap", fd);
    return throw_bpf(env, last_errno(rc), "bpf(BPF_MAP_UPDATE_ELEM)", "map", what);
  }
  return NULL;
}

// skLookupReattach(handle, nsPath): a new link for the same program and maps (the old one was detached from outside).
static napi_value js_sk_lookup_reattach(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 2, "skLookupReattach");
  sk_lookup_handle *h = handle_arg(env, argv[0], &SK_LOOKUP, true);
  if (h == NULL) return NULL;
  char ns_path[PATH_MAX], what[PATH_MAX + 64];
  if (!arg_string(env, argv[1], "nsPath", ns_path, sizeof ns_path)) return NULL;
  log_reset();
  int ns_fd = open(ns_path, O_RDONLY | O_CLOEXEC);
  if (ns_fd < 0) {
    snprintf(what, sizeof what, "open %s", ns_path);
    return throw_bpf(env, errno, "open", "attach", what);
  }
  struct bpf_link *link = bpf_program__attach_netns(h->skel->progs.trellis_inbound, ns_fd);
  int attach_errno = errno;
  close(ns_fd);
  if (link == NULL) {
    snprintf(what, sizeof what, "attach to the netns %s", ns_path);
    return throw_bpf(env, attach_errno > 0 ? attach_errno : EINVAL, "bpf(BPF_LINK_CREATE)", "attach", what);
  }
  bpf_link__destroy(h->link);
  h->link = link;
  return NULL;
}

// skLookupVerdicts(handle) -> number[TRELLIS_SKL_VERDICTS]: lookups per verdict since attach, summed over CPUs.
static napi_value js_sk_lookup_verdicts(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 1, "skLookupVerdicts");
  sk_lookup_handle *h = handle_arg(env, argv[0], &SK_LOOKUP, true);
  if (h == NULL) return NULL;
  return verdict_sums(env, h->skel->maps.verdicts, TRELLIS_SKL_VERDICTS);
}

// skLookupIds(handle) -> { program, link, netnsInode }: the kernel's ids, as bpftool shows them.
static napi_value js_sk_lookup_ids(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 1, "skLookupIds");
  sk_lookup_handle *h = handle_arg(env, argv[0], &SK_LOOKUP, true);
  if (h == NULL) return NULL;
  struct bpf_prog_info prog;
  struct bpf_link_info link;
  __u32 prog_len = sizeof prog, link_len = sizeof link;
  memset(&prog, 0, sizeof prog);
  memset(&link, 0, sizeof link);
  int rc = bpf_obj_get_info_by_fd(bpf_program__fd(h->skel->progs.trellis_inbound), &prog, &prog_len);
  if (rc == 0) rc = bpf_obj_get_info_by_fd(bpf_link__fd(h->link), &link, &link_len);
  if (rc != 0) return throw_bpf(env, last_errno(rc), "bpf(BPF_OBJ_GET_INFO_BY_FD)", "map", "read the program's ids");
  napi_value result;
  NAPI_CALL(env, napi_create_object(env, &result));
  if (!set_number(env, result, "program", prog.id)) return NULL;
  if (!set_number(env, result, "link", link.id)) return NULL;
  if (!set_number(env, result, "netnsInode", link.netns.netns_ino)) return NULL;
  return result;
}

// skLookupClose(handle): detaches and unloads; the pod's inbound connections go where they were going again.
static napi_value js_sk_lookup_close(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 1, "skLookupClose");
  void *h = handle_arg(env, argv[0], &SK_LOOKUP, false);
  if (h == NULL) return NULL;
  sk_lookup_release(h);
  return NULL;
}

// One agent's TCP health program: its object (program and stats map) and its link to the agent's cgroup. The map
// outlives a re-attached link, so threads that read it by its fd never see it change.
typedef struct {
  struct trellis_tcp_health *skel;
  struct bpf_link *link;
} tcp_health_handle;

static void tcp_health_release(void *data) {
  tcp_health_handle *h = data;
  bpf_link__destroy(h->link);
  h->link = NULL;
  trellis_tcp_health__destroy(h->skel);
  h->skel = NULL;
}

static const handle_kind TCP_HEALTH = {{0x7472656c6c697362ULL, 0x7463706865616c74ULL}, "a TCP health", "TCP health", tcp_health_release};

// Links the loaded program to the cgroup at `path` (a directory of a cgroup v2 mount).
static napi_value tcp_health_link(napi_env env, tcp_health_handle *h, const char *path) {
  char what[PATH_MAX + 64];
  int cg_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cg_fd < 0) {
    snprintf(what, sizeof what, "open %s", path);
    return throw_bpf(env, errno, "open", "attach", what);
  }
  struct bpf_link *link = bpf_program__attach_cgroup(h->skel->progs.trellis_tcp_health, cg_fd);
  int attach_errno = errno;
  close(cg_fd);
  if (link == NULL) {
    snprintf(what, sizeof what, "attach to the cgroup %s", path);
    return throw_bpf(env, attach_errno > 0 ? attach_errno : EINVAL, "bpf(BPF_LINK_CREATE)", "attach", what);
  }
  bpf_link__destroy(h->link);
  h->link = link;
  return NULL;
}

// tcpHealthAttach(cgroupPath) -> handle: loads the sockops program and links it to the cgroup. On failure nothing
// stays behind.
static napi_value js_tcp_health_attach(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 1, "tcpHealthAttach");
  char path[PATH_MAX];
  if (!arg_string(env, argv[0], "cgroupPath", path, sizeof path)) return NULL;
  tcp_health_handle *h = calloc(1, sizeof *h);
  if (h == NULL) return throw_bpf(env, ENOMEM, "calloc", "open", "TCP health handle");
  log_reset();
  h->skel = trellis_tcp_health__open();
  if (h->skel == NULL) {
    int err = last_errno(0);
    free(h);
    return throw_bpf(env, err, "bpf_object__open", "open", "open the embedded object");
  }
  int rc = trellis_tcp_health__load(h->skel);
  if (rc != 0) {
    int err = last_errno(rc);
    tcp_health_release(h);
    free(h);
    return throw_bpf(env, err, "bpf(BPF_PROG_LOAD)", "load", "load");
  }
  tcp_health_link(env, h, path);
  if (h->link == NULL) {
    tcp_health_release(h);
    free(h);
    return NULL;
  }
  log_reset();
  return handle_wrap(env, h, &TCP_HEALTH);
}

// tcpHealthReattach(handle, cgroupPath): a new link for the same program and map (the old one was detached).
static napi_value js_tcp_health_reattach(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 2, "tcpHealthReattach");
  tcp_health_handle *h = handle_arg(env, argv[0], &TCP_HEALTH, true);
  if (h == NULL) return NULL;
  char path[PATH_MAX];
  if (!arg_string(env, argv[1], "cgroupPath", path, sizeof path)) return NULL;
  log_reset();
  return tcp_health_link(env, h, path);
}

// tcpHealthIds(handle) -> { program, link, cgroupId, mapFd }: cgroupId 0 when the link was detached (bpftool link
// detach) and the program runs no more.
static napi_value js_tcp_health_ids(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 1, "tcpHealthIds");
  tcp_health_handle *h = handle_arg(env, argv[0], &TCP_HEALTH, true);
  if (h == NULL) return NULL;
  struct bpf_prog_info prog;
  struct bpf_link_info link;
  __u32 prog_len = sizeof prog, link_len = sizeof link;
  memset(&prog, 0, sizeof prog);
  memset(&link, 0, sizeof link);
  int rc = bpf_obj_get_info_by_fd(bpf_program__fd(h->skel->progs.trellis_tcp_health), &prog, &prog_len);
  if (rc == 0) rc = bpf_obj_get_info_by_fd(bpf_link__fd(h->link), &link, &link_len);
  if (rc != 0) return throw_bpf(env, last_errno(rc), "bpf(BPF_OBJ_GET_INFO_BY_FD)", "map", "read the program's ids");
  napi_value result;
  NAPI_CALL(env, napi_create_object(env, &result));
  if (!set_number(env, result, "program", prog.id)) return NULL;
  if (!set_number(env, result, "link", link.id)) return NULL;
  if (!set_number(env, result, "cgroupId", (double)link.cgroup.cgroup_id)) return NULL;
  if (!set_number(env, result, "mapFd", bpf_map__fd(h->skel->maps.tcp_stats))) return NULL;
  return result;
}

// tcpHealthClose(handle): detaches and unloads, the map with it.
static napi_value js_tcp_health_close(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 1, "tcpHealthClose");
  tcp_health_handle *h = handle_arg(env, argv[0], &TCP_HEALTH, false);
  if (h == NULL) return NULL;
  tcp_health_release(h);
  return NULL;
}

// tcpStatsRead(mapFd, cookie, remove) -> [srttUs, retrans, rttSamples] | null: one socket's entry, by the map's fd
// (any thread of the agent may read it; the main thread holds the map). With `remove`, read and deleted in one call.
static napi_value js_tcp_stats_read(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 3, "tcpStatsRead");
  uint32_t map_fd;
  double cookie_d;
  bool remove = false;
  if (!arg_uint32(env, argv[0], "mapFd", &map_fd)) return NULL;
  NAPI_CALL(env, napi_get_value_double(env, argv[1], &cookie_d));
  NAPI_CALL(env, napi_get_value_bool(env, argv[2], &remove));
  __u64 cookie = (__u64)cookie_d;
  struct trellis_tcp_stats stats;
  int rc = remove ? bpf_map_lookup_and_delete_elem((int)map_fd, &cookie, &stats) : bpf_map_lookup_elem((int)map_fd, &cookie, &stats);
  napi_value result;
  if (rc != 0) {
    int err = last_errno(rc);
    if (err == ENOENT) {
      NAPI_CALL(env, napi_get_null(env, &result));
      return result;
    }
    return throw_bpf(env, err, remove ? "bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM)" : "bpf(BPF_MAP_LOOKUP_ELEM)", "map", "read a socket's TCP stats");
  }
  double values[3] = {stats.srtt_us, stats.retrans, stats.rtt_samples};
  NAPI_CALL(env, napi_create_array_with_length(env, 3, &result));
  for (uint32_t i = 0; i < 3; i++) {
    napi_value n;
    NAPI_CALL(env, napi_create_double(env, values[i], &n));
    NAPI_CALL(env, napi_set_element(env, result, i, n));
  }
  return result;
}

// tcpStatsForget(mapFd, cookie): deletes a socket's entry (a shared socket, at its close); no entry is no error.
static napi_value js_tcp_stats_forget(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 2, "tcpStatsForget");
  uint32_t map_fd;
  double cookie_d;
  if (!arg_uint32(env, argv[0], "mapFd", &map_fd)) return NULL;
  NAPI_CALL(env, napi_get_value_double(env, argv[1], &cookie_d));
  __u64 cookie = (__u64)cookie_d;
  int rc = bpf_map_delete_elem((int)map_fd, &cookie);
  if (rc != 0 && last_errno(rc) != ENOENT) return throw_bpf(env, last_errno(rc), "bpf(BPF_MAP_DELETE_ELEM)", "map", "forget a socket's TCP stats");
  return NULL;
}

// socketCookie(fd) -> number: the kernel's cookie of a socket (SO_COOKIE), the key the sockops program files it under.
static napi_value js_socket_cookie(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 1, "socketCookie");
  uint32_t fd;
  if (!arg_uint32(env, argv[0], "fd", &fd)) return NULL;
  __u64 cookie = 0;
  socklen_t len = sizeof cookie;
  if (getsockopt((int)fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) != 0) return throw_bpf(env, errno, "getsockopt(SO_COOKIE)", "map", "read the socket's cookie");
  napi_value result;
  NAPI_CALL(env, napi_create_double(env, (double)cookie, &result));
  return result;
}

// The outbound programs on a cgroup root (native/bpf/outbound.bpf.c): their object, one link per attach point, and
// whether the maps of original destinations are a predecessor's (a hand-over).
#define OUT_LINKS 5
typedef struct {
  struct trellis_outbound *skel;
  struct bpf_link *links[OUT_LINKS];
  bool shared;
} outbound_handle;

static struct bpf_program *outbound_program(outbound_handle *h, int i) {
  struct bpf_program *progs[OUT_LINKS] = {h->skel->progs.trellis_conn4, h->skel->progs.trellis_conn6, h->skel->progs.trellis_peer4,
                                          h->skel->progs.trellis_peer6, h->skel->progs.trellis_outops};
  return progs[i];
}

static void outbound_release(void *data) {
  outbound_handle *h = data;
  for (int i = 0; i < OUT_LINKS; i++) {
    bpf_link__destroy(h->links[i]);
    h->links[i] = NULL;
  }
  trellis_outbound__destroy(h->skel);
  h->skel = NULL;
}

static const handle_kind OUTBOUND = {{0x7472656c6c697362ULL, 0x6f7574626f756e64ULL}, "an outbound", "outbound", outbound_release};

// The ids of the programs of `type` attached to the cgroup named `name`, each with its maps' ids (up to 16).
typedef struct {
  __u32 prog;
  __u32 maps[16];
  __u32 map_count;
} attached_prog;

static __u32 attached_named(int cg_fd, enum bpf_attach_type type, const char *name, attached_prog *out, __u32 max) {
  __u32 ids[64], count = 64, flags = 0, found = 0;
  if (bpf_prog_query(cg_fd, type, 0, &flags, ids, &count) != 0) return 0;
  for (__u32 i = 0; i < count && i < 64 && found < max; i++) {
    int prog_fd = bpf_prog_get_fd_by_id(ids[i]);
    if (prog_fd < 0) continue;
    struct bpf_prog_info info;
    __u32 len = sizeof info;
    memset(&info, 0, sizeof info);
    memset(&out[found], 0, sizeof out[found]);
    info.nr_map_ids = 16;
    info.map_ids = (__u64)(unsigned long)out[found].maps;
    int rc = bpf_obj_get_info_by_fd(prog_fd, &info, &len);
    close(prog_fd);
    if (rc != 0 || strcmp(info.name, name) != 0) continue;
    out[found].prog = ids[i];
    out[found].map_count = info.nr_map_ids < 16 ? info.nr_map_ids : 16;
    found++;
  }
  return found;
}

// A map of `p` by name: its fd (the caller closes it) and id, or -1.
static int map_named(const attached_prog *p, const char *name, __u32 *id) {
  for (__u32 m = 0; m < p->map_count; m++) {
    int fd = bpf_map_get_fd_by_id(p->maps[m]);
    if (fd < 0) continue;
    struct bpf_map_info mi;
    __u32 len = sizeof mi;
    memset(&mi, 0, sizeof mi);
    if (bpf_obj_get_info_by_fd(fd, &mi, &len) == 0 && strstr(mi.name, name) != NULL) {
      if (id != NULL) *id = mi.id;
      return fd;
    }
    close(fd);
  }
  return -1;
}

// Whether the connect4 program's settings (its .rodata) name `owner` as the netns of the agent that loaded it.
static bool owned_by(const attached_prog *p, __u64 owner) {
  int fd = map_named(p, ".rodata", NULL);
  if (fd < 0) return false;
  bool same = false;
  struct bpf_map_info mi;
  __u32 len = sizeof mi;
  memset(&mi, 0, sizeof mi);
  if (bpf_obj_get_info_by_fd(fd, &mi, &len) == 0 && mi.value_size >= sizeof(struct trellis_out_config)) {
    char *value = calloc(1, mi.value_size);
    __u32 zero = 0;
    if (value != NULL && bpf_map_lookup_elem(fd, &zero, value) == 0) {
      struct trellis_out_config theirs;
      memcpy(&theirs, value, sizeof theirs);
      same = theirs.owner_netns == owner;
    }
    free(value);
  }
  close(fd);
  return same;
}

// A running agent's programs on the cgroup, loaded by an agent in the same netns (its owner_netns): their maps of
// original destinations are reused, so a connection redirected by either agent's program is found by either agent's
// listener. Its connect4 program holds by_socket (and its settings); its sockops program, the one sharing that
// by_socket, holds by_port. Programs of other netns (another lab's node) are left alone. Returns true when reused.
static bool outbound_share_predecessor(struct trellis_outbound *skel, int cg_fd, __u64 owner) {
  attached_prog conns[16], opses[16];
  __u32 n_conn = attached_named(cg_fd, BPF_CGROUP_INET4_CONNECT, "trellis_conn4", conns, 16);
  __u32 n_ops = n_conn > 0 ? attached_named(cg_fd, BPF_CGROUP_SOCK_OPS, "trellis_outops", opses, 16) : 0;
  for (__u32 i = 0; i < n_conn; i++) {
    if (!owned_by(&conns[i], owner)) continue;
    __u32 socket_id = 0;
    int by_socket = map_named(&conns[i], "by_socket", &socket_id);
    if (by_socket < 0) continue;
    int by_port = -1;
    for (__u32 j = 0; j < n_ops && by_port < 0; j++) {
      bool pairs = false;
      for (__u32 m = 0; m < opses[j].map_count; m++) pairs = pairs || opses[j].maps[m] == socket_id;
      if (pairs) by_port = map_named(&opses[j], "by_port", NULL);
    }
    bool reused = by_port >= 0 && bpf_map__reuse_fd(skel->maps.by_socket, by_socket) == 0 && bpf_map__reuse_fd(skel->maps.by_port, by_port) == 0;
    // reuse_fd dups the fds it keeps.
    close(by_socket);
    if (by_port >= 0) close(by_port);
    if (reused) return true;
  }
  return false;
}

// The by_port map of a running eBPF-mode agent in the same netns (`owner`), found on the cgroup as
// outbound_share_predecessor finds it: its fd (the caller owns it), or -1 when there is none.
static int outbound_find_by_port(int cg_fd, __u64 owner) {
  attached_prog conns[16], opses[16];
  __u32 n_conn = attached_named(cg_fd, BPF_CGROUP_INET4_CONNECT, "trellis_conn4", conns, 16);
  __u32 n_ops = n_conn > 0 ? attached_named(cg_fd, BPF_CGROUP_SOCK_OPS, "trellis_outops", opses, 16) : 0;
  for (__u32 i = 0; i < n_conn; i++) {
    if (!owned_by(&conns[i], owner)) continue;
    __u32 socket_id = 0;
    int by_socket = map_named(&conns[i], "by_socket", &socket_id);
    if (by_socket < 0) continue;
    close(by_socket);
    for (__u32 j = 0; j < n_ops; j++) {
      for (__u32 m = 0; m < opses[j].map_count; m++) {
        if (opses[j].maps[m] == socket_id) return map_named(&opses[j], "by_port", NULL);
      }
    }
  }
  return -1;
}

// outboundFindMap(cgroupPath, ownerNetns) -> fd | -1: the map of original destinations by accepted port of an
// eBPF-mode agent in this netns (an nft-mode agent reads it during a hand-over between modes, when connections that
// agent's programs redirected land on its listeners). The fd is the caller's.
static napi_value js_outbound_find_map(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 2, "outboundFindMap");
  char path[PATH_MAX], what[PATH_MAX + 64];
  double owner;
  if (!arg_string(env, argv[0], "cgroupPath", path, sizeof path)) return NULL;
  NAPI_CALL(env, napi_get_value_double(env, argv[1], &owner));
  int cg_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cg_fd < 0) {
    snprintf(what, sizeof what, "open %s", path);
    return throw_bpf(env, errno, "open", "map", what);
  }
  int fd = outbound_find_by_port(cg_fd, (__u64)owner);
  close(cg_fd);
  napi_value result;
  NAPI_CALL(env, napi_create_int32(env, fd, &result));
  return result;
}

// Links every outbound program not linked yet (or detached) to the cgroup at `path`.
static napi_value outbound_link(napi_env env, outbound_handle *h, const char *path, bool only_detached) {
  char what[PATH_MAX + 64];
  int cg_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cg_fd < 0) {
    snprintf(what, sizeof what, "open %s", path);
    return throw_bpf(env, errno, "open", "attach", what);
  }
  for (int i = 0; i < OUT_LINKS; i++) {
    if (only_detached && h->links[i] != NULL) {
      struct bpf_link_info link;
      __u32 len = sizeof link;
      memset(&link, 0, sizeof link);
      if (bpf_obj_get_info_by_fd(bpf_link__fd(h->links[i]), &link, &len) == 0 && link.cgroup.cgroup_id != 0) continue;
    }
    struct bpf_program *prog = outbound_program(h, i);
    struct bpf_link *link = bpf_program__attach_cgroup(prog, cg_fd);
    int attach_errno = errno;
    if (link == NULL) {
      close(cg_fd);
      snprintf(what, sizeof what, "attach %s to the cgroup %s", bpf_program__name(prog), path);
      return throw_bpf(env, attach_errno > 0 ? attach_errno : EINVAL, "bpf(BPF_LINK_CREATE)", "attach", what);
    }
    bpf_link__destroy(h->links[i]);
    h->links[i] = link;
  }
  close(cg_fd);
  return NULL;
}

// outboundAttach(cgroupPath, ownerNetns, agentMark, transparentMark, port) -> handle: loads the outbound programs
// (sharing a same-netns predecessor's maps of original destinations) and links them to the cgroup. On failure nothing
// stays behind.
static napi_value js_outbound_attach(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 5, "outboundAttach");
  char path[PATH_MAX], what[PATH_MAX + 64];
  double owner;
  uint32_t agent_mark, transparent_mark, port;
  if (!arg_string(env, argv[0], "cgroupPath", path, sizeof path)) return NULL;
  NAPI_CALL(env, napi_get_value_double(env, argv[1], &owner));
  if (!arg_uint32(env, argv[2], "agentMark", &agent_mark)) return NULL;
  if (!arg_uint32(env, argv[3], "transparentMark", &transparent_mark)) return NULL;
  if (!arg_uint32(env, argv[4], "port", &port)) return NULL;
  outbound_handle *h = calloc(1, sizeof *h);
  if (h == NULL) return throw_bpf(env, ENOMEM, "calloc", "open", "outbound handle");
  log_reset();
  h->skel = trellis_outbound__open();
  if (h->skel == NULL) {
    int err = last_errno(0);
    free(h);
    return throw_bpf(env, err, "bpf_object__open", "open", "open the embedded object");
  }
  h->skel->rodata->settings.owner_netns = (__u64)owner;
  h->skel->rodata->settings.agent_mark = agent_mark;
  h->skel->rodata->settings.transparent_mark = transparent_mark;
  h->skel->rodata->settings.port = port;
  int cg_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cg_fd < 0) {
    int err = errno;
    outbound_release(h);
    free(h);
    snprintf(what, sizeof what, "open %s", path);
    return throw_bpf(env, err, "open", "attach", what);
  }
  h->shared = outbound_share_predecessor(h->skel, cg_fd, (__u64)owner);
  close(cg_fd);
  int rc = trellis_outbound__load(h->skel);
  if (rc != 0) {
    int err = last_errno(rc);
    outbound_release(h);
    free(h);
    return throw_bpf(env, err, "bpf(BPF_PROG_LOAD)", "load", "load");
  }
  outbound_link(env, h, path, false);
  if (h->links[OUT_LINKS - 1] == NULL) {
    outbound_release(h);
    free(h);
    return NULL;
  }
  log_reset();
  return handle_wrap(env, h, &OUTBOUND);
}

// outboundReattach(handle, cgroupPath): new links for the programs whose link was detached from outside.
static napi_value js_outbound_reattach(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 2, "outboundReattach");
  outbound_handle *h = handle_arg(env, argv[0], &OUTBOUND, true);
  if (h == NULL) return NULL;
  char path[PATH_MAX];
  if (!arg_string(env, argv[1], "cgroupPath", path, sizeof path)) return NULL;
  log_reset();
  return outbound_link(env, h, path, true);
}

// outboundIds(handle) -> { shared, mapFd, links: [{ program, name, link, cgroupId }] }: cgroupId 0 for a link detached
// from outside. mapFd: original destinations by accepted port, which every thread of the agent reads.
static napi_value js_outbound_ids(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 1, "outboundIds");
  outbound_handle *h = handle_arg(env, argv[0], &OUTBOUND, true);
  if (h == NULL) return NULL;
  napi_value result, links, shared;
  NAPI_CALL(env, napi_create_object(env, &result));
  NAPI_CALL(env, napi_create_array_with_length(env, OUT_LINKS, &links));
  for (int i = 0; i < OUT_LINKS; i++) {
    struct bpf_prog_info prog;
    struct bpf_link_info link;
    __u32 prog_len = sizeof prog, link_len = sizeof link;
    memset(&prog, 0, sizeof prog);
    memset(&link, 0, sizeof link);
    int rc = bpf_obj_get_info_by_fd(bpf_program__fd(outbound_program(h, i)), &prog, &prog_len);
    if (rc == 0) rc = bpf_obj_get_info_by_fd(bpf_link__fd(h->links[i]), &link, &link_len);
    if (rc != 0) return throw_bpf(env, last_errno(rc), "bpf(BPF_OBJ_GET_INFO_BY_FD)", "map", "read the programs' ids");
    napi_value entry;
    NAPI_CALL(env, napi_create_object(env, &entry));
    if (!set_number(env, entry, "program", prog.id)) return NULL;
    if (!set_string(env, entry, "name", bpf_program__name(outbound_program(h, i)))) return NULL;
    if (!set_number(env, entry, "link", link.id)) return NULL;
    if (!set_number(env, entry, "cgroupId", (double)link.cgroup.cgroup_id)) return NULL;
    NAPI_CALL(env, napi_set_element(env, links, (uint32_t)i, entry));
  }
  NAPI_CALL(env, napi_set_named_property(env, result, "links", links));
  NAPI_CALL(env, napi_get_boolean(env, h->shared, &shared));
  NAPI_CALL(env, napi_set_named_property(env, result, "shared", shared));
  if (!set_number(env, result, "mapFd", bpf_map__fd(h->skel->maps.by_port))) return NULL;
  return result;
}

// outboundSetPod(handle, netnsCookie, ips): the pod whose netns has this cookie is meshed; its own addresses are
// reached directly.
static napi_value js_outbound_set_pod(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 3, "outboundSetPod");
  outbound_handle *h = handle_arg(env, argv[0], &OUTBOUND, true);
  if (h == NULL) return NULL;
  double cookie_d;
  NAPI_CALL(env, napi_get_value_double(env, argv[1], &cookie_d));
  char ips[2 * TRELLIS_OUT_POD_IPS][INET6_ADDRSTRLEN];
  uint32_t count;
  if (!arg_string_array(env, argv[2], "ips", ips, 2 * TRELLIS_OUT_POD_IPS, &count)) return NULL;
  struct trellis_out_pod pod;
  memset(&pod, 0, sizeof pod);
  for (uint32_t i = 0; i < count; i++) {
    if (pod.ip4_count < TRELLIS_OUT_POD_IPS && inet_pton(AF_INET, ips[i], &pod.ip4[pod.ip4_count]) == 1) {
      pod.ip4_count++;
    } else if (pod.ip6_count < TRELLIS_OUT_POD_IPS && inet_pton(AF_INET6, ips[i], pod.ip6[pod.ip6_count]) == 1) {
      pod.ip6_count++;
    } else {
      char message[INET6_ADDRSTRLEN + 96];
      snprintf(message, sizeof message, "ips: %s is not an IP address, or more than %d of its family", ips[i], TRELLIS_OUT_POD_IPS);
      napi_throw_range_error(env, "EINVAL", message);
      return NULL;
    }
  }
  __u64 cookie = (__u64)cookie_d;
  log_reset();
  int rc = bpf_map__update_elem(h->skel->maps.pods, &cookie, sizeof cookie, &pod, sizeof pod, BPF_ANY);
  if (rc != 0) return throw_bpf(env, last_errno(rc), "bpf(BPF_MAP_UPDATE_ELEM)", "map", "register the pod's netns");
  return NULL;
}

// outboundDeletePod(handle, netnsCookie): the pod is no longer meshed; no entry is no error.
static napi_value js_outbound_delete_pod(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 2, "outboundDeletePod");
  outbound_handle *h = handle_arg(env, argv[0], &OUTBOUND, true);
  if (h == NULL) return NULL;
  double cookie_d;
  NAPI_CALL(env, napi_get_value_double(env, argv[1], &cookie_d));
  __u64 cookie = (__u64)cookie_d;
  int rc = bpf_map__delete_elem(h->skel->maps.pods, &cookie, sizeof cookie, 0);
  if (rc != 0 && last_errno(rc) != ENOENT) return throw_bpf(env, last_errno(rc), "bpf(BPF_MAP_DELETE_ELEM)", "map", "forget the pod's netns");
  return NULL;
}

// outboundVerdicts(handle) -> number[TRELLIS_OUT_VERDICTS]: connects per verdict since attach, summed over CPUs.
static napi_value js_outbound_verdicts(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 1, "outboundVerdicts");
  outbound_handle *h = handle_arg(env, argv[0], &OUTBOUND, true);
  if (h == NULL) return NULL;
  return verdict_sums(env, h->skel->maps.out_verdicts, TRELLIS_OUT_VERDICTS);
}

// outboundClose(handle): detaches and unloads; maps shared with another agent live on with it.
static napi_value js_outbound_close(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 1, "outboundClose");
  outbound_handle *h = handle_arg(env, argv[0], &OUTBOUND, false);
  if (h == NULL) return NULL;
  outbound_release(h);
  return NULL;
}

// outboundOriginalDst(mapFd, fd) -> { address, port, family } | null: where the connection accepted on a pod's
// outbound listener (fd) was going, by the pod's netns cookie and the client's port; read and deleted in one call.
static napi_value js_outbound_original_dst(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 2, "outboundOriginalDst");
  uint32_t map_fd, fd;
  if (!arg_uint32(env, argv[0], "mapFd", &map_fd)) return NULL;
  if (!arg_uint32(env, argv[1], "fd", &fd)) return NULL;
  struct trellis_out_key key;
  memset(&key, 0, sizeof key);
  socklen_t len = sizeof key.netns;
  if (getsockopt((int)fd, SOL_SOCKET, SO_NETNS_COOKIE, &key.netns, &len) != 0) return throw_bpf(env, errno, "getsockopt(SO_NETNS_COOKIE)", "map", "read the socket's netns cookie");
  struct sockaddr_storage peer;
  socklen_t peer_len = sizeof peer;
  if (getpeername((int)fd, (struct sockaddr *)&peer, &peer_len) != 0) return throw_bpf(env, errno, "getpeername", "map", "read the client's port");
  if (peer.ss_family == AF_INET) {
    key.port = ntohs(((struct sockaddr_in *)&peer)->sin_port);
  } else if (peer.ss_family == AF_INET6) {
    key.port = ntohs(((struct sockaddr_in6 *)&peer)->sin6_port);
  } else {
    return throw_bpf(env, EAFNOSUPPORT, "getpeername", "map", "read the client's port");
  }
  struct trellis_out_original o;
  napi_value result;
  if (bpf_map_lookup_and_delete_elem((int)map_fd, &key, &o) != 0) {
    int err = errno;
    if (err == ENOENT) {
      NAPI_CALL(env, napi_get_null(env, &result));
      return result;
    }
    return throw_bpf(env, err, "bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM)", "map", "read the original destination");
  }
  char address[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &o.ip4, address, sizeof address);
  NAPI_CALL(env, napi_create_object(env, &result));
  if (!set_string(env, result, "address", address)) return NULL;
  if (!set_number(env, result, "port", ntohs(o.port))) return NULL;
  if (!set_number(env, result, "family", 4)) return NULL;
  return result;
}

// socketNetnsCookie(fd) -> number: the cookie of the network namespace the socket lives in (SO_NETNS_COOKIE, Linux
// 5.14+), the key the outbound programs know a pod by.
static napi_value js_socket_netns_cookie(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 1, "socketNetnsCookie");
  uint32_t fd;
  if (!arg_uint32(env, argv[0], "fd", &fd)) return NULL;
  __u64 cookie = 0;
  socklen_t len = sizeof cookie;
  if (getsockopt((int)fd, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) != 0) return throw_bpf(env, errno, "getsockopt(SO_NETNS_COOKIE)", "map", "read the netns cookie");
  napi_value result;
  NAPI_CALL(env, napi_create_double(env, (double)cookie, &result));
  return result;
}

// One agent thread's same-node kernel splice: the stream verdict program attached to its sockhash, and the peers map.
// Closing the handle detaches and unloads them; sockets still in the sockhash leave it then (or when they close).
typedef struct {
  struct trellis_same_node *skel;
  bool attached;
} same_node_handle;

static void same_node_release(void *data) {
  same_node_handle *h = data;
  if (h->skel != NULL && h->attached) {
    bpf_prog_detach2(bpf_program__fd(h->skel->progs.trellis_same_node), bpf_map__fd(h->skel->maps.same_node_sockets), BPF_SK_SKB_STREAM_VERDICT);
  }
  h->attached = false;
  trellis_same_node__destroy(h->skel);
  h->skel = NULL;
}

static const handle_kind SAME_NODE = {{0x7472656c6c697362ULL, 0x73616d656e6f6465ULL}, "a same-node splice", "same-node splice", same_node_release};

// sameNodeOpen() -> handle: loads the stream verdict program and attaches it to its sockhash. On failure nothing stays.
static napi_value js_same_node_open(napi_env env, napi_callback_info info) {
  (void)info;
  same_node_handle *h = calloc(1, sizeof *h);
  if (h == NULL) return throw_bpf(env, ENOMEM, "calloc", "open", "same-node splice handle");
  log_reset();
  h->skel = trellis_same_node__open();
  if (h->skel == NULL) {
    int err = last_errno(0);
    free(h);
    return throw_bpf(env, err, "bpf_object__open", "open", "open the embedded object");
  }
  int rc = trellis_same_node__load(h->skel);
  if (rc != 0) {
    int err = last_errno(rc);
    same_node_release(h);
    free(h);
    return throw_bpf(env, err, "bpf(BPF_PROG_LOAD)", "load", "load");
  }
  rc = bpf_prog_attach(bpf_program__fd(h->skel->progs.trellis_same_node), bpf_map__fd(h->skel->maps.same_node_sockets), BPF_SK_SKB_STREAM_VERDICT, 0);
  if (rc != 0) {
    int err = last_errno(rc);
    same_node_release(h);
    free(h);
    return throw_bpf(env, err, "bpf(BPF_PROG_ATTACH)", "attach", "attach the stream verdict to its sockhash");
  }
  h->attached = true;
  log_reset();
  return handle_wrap(env, h, &SAME_NODE);
}

static int socket_cookie(int fd, __u64 *cookie) {
  socklen_t len = sizeof *cookie;
  return getsockopt(fd, SOL_SOCKET, SO_COOKIE, cookie, &len) == 0 ? 0 : errno;
}

// sameNodeAdd(handle, fdA, fdB) -> [cookieA, cookieB]: from now on what either socket reads is sent out of the other.
// Both peers' entries first, then the sockets (the verdict runs from the sockhash insert on). On failure nothing
// stays: an entry already made is removed (a socket already in the sockhash stays there with no peer, which leaves its
// bytes to its reader).
static napi_value js_same_node_add(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 3, "sameNodeAdd");
  same_node_handle *h = handle_arg(env, argv[0], &SAME_NODE, true);
  if (h == NULL) return NULL;
  uint32_t fds[2];
  if (!arg_uint32(env, argv[1], "fdA", &fds[0]) || !arg_uint32(env, argv[2], "fdB", &fds[1])) return NULL;
  __u64 cookies[2];
  for (int i = 0; i < 2; i++) {
    int err = socket_cookie((int)fds[i], &cookies[i]);
    if (err != 0) return throw_bpf(env, err, "getsockopt(SO_COOKIE)", "map", "read a socket's cookie");
  }
  int peers = bpf_map__fd(h->skel->maps.same_node_peers);
  int sockets = bpf_map__fd(h->skel->maps.same_node_sockets);
  int made = 0, rc = 0;
  const char *what = "put a socket's peer in the map";
  const char *syscall = "bpf(BPF_MAP_UPDATE_ELEM)";
  for (int i = 0; i < 2 && rc == 0; i++) {
    struct trellis_same_node_peer p = {.peer = cookies[1 - i]};
    rc = bpf_map_update_elem(peers, &cookies[i], &p, BPF_NOEXIST);
    if (rc == 0) made++;
  }
  for (int i = 0; i < 2 && rc == 0; i++) {
    __u32 fd = fds[i];
    rc = bpf_map_update_elem(sockets, &cookies[i], &fd, BPF_NOEXIST);
    if (rc != 0) what = "put a socket in the sockhash (it must be an established TCP socket)";
  }
  if (rc != 0) {
    int err = last_errno(rc);
    for (int i = 0; i < made; i++) bpf_map_delete_elem(peers, &cookies[i]);
    return throw_bpf(env, err, syscall, "map", what);
  }
  napi_value result;
  NAPI_CALL(env, napi_create_array_with_length(env, 2, &result));
  for (uint32_t i = 0; i < 2; i++) {
    napi_value n;
    NAPI_CALL(env, napi_create_double(env, (double)cookies[i], &n));
    NAPI_CALL(env, napi_set_element(env, result, i, n));
  }
  return result;
}

// sameNodeCounts(handle, cookie, forget) -> [bytes, dropped] | null: what the program sent on for one socket; with
// `forget`, read and deleted in one call (the socket's bytes are left to its reader from then on).
static napi_value js_same_node_counts(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 3, "sameNodeCounts");
  same_node_handle *h = handle_arg(env, argv[0], &SAME_NODE, true);
  if (h == NULL) return NULL;
  double cookie_d;
  bool forget = false;
  NAPI_CALL(env, napi_get_value_double(env, argv[1], &cookie_d));
  NAPI_CALL(env, napi_get_value_bool(env, argv[2], &forget));
  __u64 cookie = (__u64)cookie_d;
  int peers = bpf_map__fd(h->skel->maps.same_node_peers);
  struct trellis_same_node_peer p;
  int rc = forget ? bpf_map_lookup_and_delete_elem(peers, &cookie, &p) : bpf_map_lookup_elem(peers, &cookie, &p);
  napi_value result;
  if (rc != 0) {
    int err = last_errno(rc);
    if (err == ENOENT) {
      NAPI_CALL(env, napi_get_null(env, &result));
      return result;
    }
    return throw_bpf(env, err, forget ? "bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM)" : "bpf(BPF_MAP_LOOKUP_ELEM)", "map", "read a socket's same-node counts");
  }
  NAPI_CALL(env, napi_create_array_with_length(env, 2, &result));
  double values[2] = {(double)p.bytes, (double)p.dropped};
  for (uint32_t i = 0; i < 2; i++) {
    napi_value n;
    NAPI_CALL(env, napi_create_double(env, values[i], &n));
    NAPI_CALL(env, napi_set_element(env, result, i, n));
  }
  return result;
}

// sameNodeIds(handle) -> { program, sockets, peers }: the kernel's ids, as bpftool shows them.
static napi_value js_same_node_ids(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 1, "sameNodeIds");
  same_node_handle *h = handle_arg(env, argv[0], &SAME_NODE, true);
  if (h == NULL) return NULL;
  struct bpf_prog_info prog;
  struct bpf_map_info sockets, peers;
  __u32 prog_len = sizeof prog, sockets_len = sizeof sockets, peers_len = sizeof peers;
  memset(&prog, 0, sizeof prog);
  memset(&sockets, 0, sizeof sockets);
  memset(&peers, 0, sizeof peers);
  int rc = bpf_obj_get_info_by_fd(bpf_program__fd(h->skel->progs.trellis_same_node), &prog, &prog_len);
  if (rc == 0) rc = bpf_obj_get_info_by_fd(bpf_map__fd(h->skel->maps.same_node_sockets), &sockets, &sockets_len);
  if (rc == 0) rc = bpf_obj_get_info_by_fd(bpf_map__fd(h->skel->maps.same_node_peers), &peers, &peers_len);
  if (rc != 0) return throw_bpf(env, last_errno(rc), "bpf(BPF_OBJ_GET_INFO_BY_FD)", "map", "read the program's ids");
  napi_value result;
  NAPI_CALL(env, napi_create_object(env, &result));
  if (!set_number(env, result, "program", prog.id)) return NULL;
  if (!set_number(env, result, "sockets", sockets.id)) return NULL;
  if (!set_number(env, result, "peers", peers.id)) return NULL;
  return result;
}

// sameNodeClose(handle): detaches and unloads, the maps with them.
static napi_value js_same_node_close(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 1, "sameNodeClose");
  void *h = handle_arg(env, argv[0], &SAME_NODE, false);
  if (h == NULL) return NULL;
  same_node_release(h);
  return NULL;
}

// socketQueues(fd) -> [inq, outq, bytesAcked, bytesReceived, state, settled]: unread bytes in the receive queue
// (SIOCINQ; for a socket in a sockhash, what its own reader may read), bytes in the send queue not yet acknowledged
// (SIOCOUTQ), bytes acknowledged and bytes received in order so far, and the TCP state (TCP_INFO). acked + outq is all
// the socket was given to send; received - inq is what its reader took. The calls are not one atomic look: TCP_INFO is
// read before and after the queues, up to 16 times, until nothing arrived or was acknowledged meanwhile (settled 1);
// settled 0 says the figures may be a packet apart.
static napi_value js_socket_queues(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 1, "socketQueues");
  uint32_t fd;
  if (!arg_uint32(env, argv[0], "fd", &fd)) return NULL;
  int inq = 0, outq = 0;
  struct tcp_info first, ti;
  socklen_t len;
  bool settled = false;
  for (int attempt = 0; attempt < 16 && !settled; attempt++) {
    len = sizeof first;
    memset(&first, 0, sizeof first);
    if (getsockopt((int)fd, IPPROTO_TCP, TCP_INFO, &first, &len) != 0) return throw_bpf(env, errno, "getsockopt(TCP_INFO)", "map", "read a socket's TCP info");
    if (ioctl((int)fd, SIOCINQ, &inq) != 0) return throw_bpf(env, errno, "ioctl(SIOCINQ)", "map", "read a socket's receive queue");
    if (ioctl((int)fd, SIOCOUTQ, &outq) != 0) return throw_bpf(env, errno, "ioctl(SIOCOUTQ)", "map", "read a socket's send queue");
    len = sizeof ti;
    memset(&ti, 0, sizeof ti);
    if (getsockopt((int)fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) return throw_bpf(env, errno, "getsockopt(TCP_INFO)", "map", "read a socket's TCP info");
    settled = first.tcpi_bytes_received == ti.tcpi_bytes_received && first.tcpi_bytes_acked == ti.tcpi_bytes_acked;
  }
  napi_value result;
  NAPI_CALL(env, napi_create_array_with_length(env, 6, &result));
  double values[6] = {inq, outq, (double)ti.tcpi_bytes_acked, (double)ti.tcpi_bytes_received, ti.tcpi_state, settled ? 1 : 0};
  for (uint32_t i = 0; i < 6; i++) {
    napi_value n;
    NAPI_CALL(env, napi_create_double(env, values[i], &n));
    NAPI_CALL(env, napi_set_element(env, result, i, n));
  }
  return result;
}

// socketTake(fd, max) -> Buffer: reads what the socket has now (non-blocking, at most `max` bytes), for a reader that is
// not Node's: the same-node hand-over empties a socket's receive queue this way before the program takes it over, so
// that no buffer the program gets was partly read already (it sends on buffers whole). Empty when nothing waits.
static napi_value js_socket_take(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 2, "socketTake");
  uint32_t fd, max;
  if (!arg_uint32(env, argv[0], "fd", &fd) || !arg_uint32(env, argv[1], "max", &max)) return NULL;
  char *data = malloc(max > 0 ? max : 1);
  if (data == NULL) return throw_bpf(env, ENOMEM, "malloc", "map", "take a socket's bytes");
  size_t got = 0;
  while (got < max) {
    ssize_t n = recv((int)fd, data + got, max - got, MSG_DONTWAIT);
    if (n > 0) {
      got += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      int err = errno;
      free(data);
      return throw_bpf(env, err, "recv", "map", "take a socket's bytes");
    }
    break;
  }
  napi_value result;
  napi_status status = napi_create_buffer_copy(env, got, data, NULL, &result);
  free(data);
  NAPI_CALL(env, status);
  return result;
}

// socketError(fd) -> errno | 0: the socket's pending error (SO_ERROR, which clears it). A socket in a sockhash reads a
// reset as an end of stream (the kernel's reader for such sockets looks at "done" before the error), which this tells
// apart from a FIN.
static napi_value js_socket_error(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 1, "socketError");
  uint32_t fd;
  if (!arg_uint32(env, argv[0], "fd", &fd)) return NULL;
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt((int)fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return throw_bpf(env, errno, "getsockopt(SO_ERROR)", "map", "read a socket's error");
  napi_value result;
  NAPI_CALL(env, napi_create_int32(env, err, &result));
  return result;
}

// socketPoke(fd): sets SO_RCVLOWAT to 1, which has the kernel look at the socket's receive queue at once and call its
// data-ready hook when bytes wait (tcp_set_rcvlowat): for a socket just put in the same-node sockhash, the program then
// takes bytes that arrived before it was there, without waiting for the next arrival.
static napi_value js_socket_poke(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 1, "socketPoke");
  uint32_t fd;
  if (!arg_uint32(env, argv[0], "fd", &fd)) return NULL;
  int one = 1;
  if (setsockopt((int)fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one) != 0) return throw_bpf(env, errno, "setsockopt(SO_RCVLOWAT)", "map", "poke a socket's receive queue");
  return NULL;
}

napi_value trellis_bpf_init(napi_env env, napi_value exports) {
  libbpf_set_print(keep_libbpf_message);
  NAPI_EXPORT_FUNCTION(env, exports, "bpfProbe", js_bpf_probe);
  NAPI_EXPORT_FUNCTION(env, exports, "skLookupAttach", js_sk_lookup_attach);
  NAPI_EXPORT_FUNCTION(env, exports, "skLookupSetListener", js_sk_lookup_set_listener);
  NAPI_EXPORT_FUNCTION(env, exports, "skLookupReattach", js_sk_lookup_reattach);
  NAPI_EXPORT_FUNCTION(env, exports, "skLookupVerdicts", js_sk_lookup_verdicts);
  NAPI_EXPORT_FUNCTION(env, exports, "skLookupIds", js_sk_lookup_ids);
  NAPI_EXPORT_FUNCTION(env, exports, "skLookupClose", js_sk_lookup_close);
  NAPI_EXPORT_FUNCTION(env, exports, "tcpHealthAttach", js_tcp_health_attach);
  NAPI_EXPORT_FUNCTION(env, exports, "tcpHealthReattach", js_tcp_health_reattach);
  NAPI_EXPORT_FUNCTION(env, exports, "tcpHealthIds", js_tcp_health_ids);
  NAPI_EXPORT_FUNCTION(env, exports, "tcpHealthClose", js_tcp_health_close);
  NAPI_EXPORT_FUNCTION(env, exports, "tcpStatsRead", js_tcp_stats_read);
  NAPI_EXPORT_FUNCTION(env, exports, "tcpStatsForget", js_tcp_stats_forget);
  NAPI_EXPORT_FUNCTION(env, exports, "socketCookie", js_socket_cookie);
  NAPI_EXPORT_FUNCTION(env, exports, "outboundAttach", js_outbound_attach);
  NAPI_EXPORT_FUNCTION(env, exports, "outboundReattach", js_outbound_reattach);
  NAPI_EXPORT_FUNCTION(env, exports, "outboundIds", js_outbound_ids);
  NAPI_EXPORT_FUNCTION(env, exports, "outboundSetPod", js_outbound_set_pod);
  NAPI_EXPORT_FUNCTION(env, exports, "outboundDeletePod", js_outbound_delete_pod);
  NAPI_EXPORT_FUNCTION(env, exports, "outboundVerdicts", js_outbound_verdicts);
  NAPI_EXPORT_FUNCTION(env, exports, "outboundClose", js_outbound_close);
  NAPI_EXPORT_FUNCTION(env, exports, "outboundOriginalDst", js_outbound_original_dst);
  NAPI_EXPORT_FUNCTION(env, exports, "outboundFindMap", js_outbound_find_map);
  NAPI_EXPORT_FUNCTION(env, exports, "socketNetnsCookie", js_socket_netns_cookie);
  NAPI_EXPORT_FUNCTION(env, exports, "sameNodeOpen", js_same_node_open);
  NAPI_EXPORT_FUNCTION(env, exports, "sameNodeAdd", js_same_node_add);
  NAPI_EXPORT_FUNCTION(env, exports, "sameNodeCounts", js_same_node_counts);
  NAPI_EXPORT_FUNCTION(env, exports, "sameNodeIds", js_same_node_ids);
  NAPI_EXPORT_FUNCTION(env, exports, "sameNodeClose", js_same_node_close);
  NAPI_EXPORT_FUNCTION(env, exports, "socketQueues", js_socket_queues);
  NAPI_EXPORT_FUNCTION(env, exports, "socketTake", js_socket_take);
  NAPI_EXPORT_FUNCTION(env, exports, "socketError", js_socket_error);
  NAPI_EXPORT_FUNCTION(env, exports, "socketPoke", js_socket_poke);
  return exports;
}
