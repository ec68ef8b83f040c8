// Native boundary under capture/ and proxy/: opens sockets inside pod network namespaces and reads the
// pre-NAT destination of captured connections, the two things Node's net module cannot do. The eBPF half (probes,
// the inbound sk_lookup program) is bpf.c, in the same addon.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <node_api.h>

#include "bpf.h"
#include "common.h"

// From <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>, which clash with the libc headers.
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

static bool arg_family(napi_env env, napi_value value, int *domain) {
  uint32_t family;
  if (!arg_uint32(env, value, "family", &family)) return false;
  if (family != 4 && family != 6) {
    napi_throw_range_error(env, "EINVAL", "family must be 4 or 6");
    return false;
  }
  *domain = family == 4 ? AF_INET : AF_INET6;
  return true;
}

// Moves the JS thread into the netns at ns_path; returns a descriptor of the thread's own netns, for leave_netns().
static int enter_netns(const char *ns_path, failure *f) {
  int target = open(ns_path, O_RDONLY | O_CLOEXEC);
  if (target < 0) return fail(f, "open", ns_path);
  int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (home < 0) {
    fail(f, "open", "/proc/thread-self/ns/net");
    close(target);
    return -1;
  }
  if (setns(target, CLONE_NEWNET) != 0) {
    fail(f, "setns", ns_path);
    close(home);
    close(target);
    return -1;
  }
  close(target);
  return home;
}

// Back to the thread's own netns. Every later socket this thread opens would land in the pod otherwise: stopping
// is the only safe move when that fails.
static void leave_netns(int home, const char *ns_path) {
  if (setns(home, CLONE_NEWNET) != 0) {
    fprintf(stderr, "trellis: cannot return to the agent's network namespace after entering %s: %s\n",
            ns_path, strerror(errno));
    abort();
  }
  close(home);
}

// Runs on the JS thread, which setns moves into the pod for the length of one socket() call.
// A socket keeps the netns it was created in, so everything after socket() happens back home.
static int socket_in_netns(const char *ns_path, int domain, uint32_t mark, failure *f) {
  int home = enter_netns(ns_path, f);
  if (home < 0) return -1;
  int fd = socket(domain, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
  int socket_errno = errno;
  leave_netns(home, ns_path);
  if (fd < 0) {
    errno = socket_errno;
    return fail(f, "socket", ns_path);
  }
  if (mark != 0 && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) {
    fail(f, "setsockopt(SO_MARK)", ns_path);
    close(fd);
    return -1;
  }
  return fd;
}

static int set_int_option(int fd, int level, int name, int value) {
  return setsockopt(fd, level, name, &value, sizeof value);
}

// socketInNetns(nsPath, family, mark, transparent) -> fd
// transparent: IP_TRANSPARENT / IPV6_TRANSPARENT, so the socket may be bound to an address the netns does not own
// (the caller's, for a connection to the app that keeps the caller's source address).
static napi_value js_socket_in_netns(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 4, "socketInNetns");
  char ns_path[PATH_MAX];
  int domain;
  uint32_t mark;
  bool transparent;
  if (!arg_string(env, argv[0], "nsPath", ns_path, sizeof ns_path)) return NULL;
  if (!arg_family(env, argv[1], &domain)) return NULL;
  if (!arg_uint32(env, argv[2], "mark", &mark)) return NULL;
  NAPI_CALL(env, napi_get_value_bool(env, argv[3], &transparent));

  failure f;
  int fd = socket_in_netns(ns_path, domain, mark, &f);
  if (fd < 0) return throw_failure(env, &f);
  if (transparent && set_int_option(fd, domain == AF_INET ? SOL_IP : SOL_IPV6, domain == AF_INET ? IP_TRANSPARENT : IPV6_TRANSPARENT, 1) != 0) {
    fail(&f, domain == AF_INET ? "setsockopt(IP_TRANSPARENT)" : "setsockopt(IPV6_TRANSPARENT)", ns_path);
    close(fd);
    return throw_failure(env, &f);
  }
  napi_value result;
  NAPI_CALL(env, napi_create_int32(env, fd, &result));
  return result;
}

// listenInNetns(nsPath, family, host, port, backlog, mark, transparent, reusePort) -> fd
// reusePort: SO_REUSEPORT, so that several listeners (the agent's worker threads, or an old and a new agent during
// a hand-over) share the port and the kernel spreads connections among them.
static napi_value js_listen_in_netns(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 8, "listenInNetns");
  char ns_path[PATH_MAX];
  char host[INET6_ADDRSTRLEN];
  int domain;
  uint32_t port, backlog, mark;
  bool transparent, reuse_port;
  if (!arg_string(env, argv[0], "nsPath", ns_path, sizeof ns_path)) return NULL;
  if (!arg_family(env, argv[1], &domain)) return NULL;
  if (!arg_string(env, argv[2], "host", host, sizeof host)) return NULL;
  if (!arg_uint32(env, argv[3], "port", &port)) return NULL;
  if (!arg_uint32(env, argv[4], "backlog", &backlog)) return NULL;
  if (!arg_uint32(env, argv[5], "mark", &mark)) return NULL;
  NAPI_CALL(env, napi_get_value_bool(env, argv[6], &transparent));
  NAPI_CALL(env, napi_get_value_bool(env, argv[7], &reuse_port));
  if (port > 65535) {
    napi_throw_range_error(env, "EINVAL", "port must be 0 to 65535");
    return NULL;
  }

  char where[PATH_MAX + INET6_ADDRSTRLEN + 16];
  snprintf(where, sizeof where, domain == AF_INET6 ? "[%s]:%u in %s" : "%s:%u in %s", host, port, ns_path);

  struct sockaddr_storage addr;
  socklen_t addr_len;
  memset(&addr, 0, sizeof addr);
  if (domain == AF_INET) {
    struct sockaddr_in *in = (struct sockaddr_in *)&addr;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)port);
    addr_len = sizeof *in;
    if (inet_pton(AF_INET, host, &in->sin_addr) != 1) {
      failure f = {EINVAL, "inet_pton", where};
      return throw_failure(env, &f);
    }
  } else {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&addr;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    addr_len = sizeof *in6;
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1) {
      failure f = {EINVAL, "inet_pton", where};
      return throw_failure(env, &f);
    }
  }

  failure f;
  int fd = socket_in_netns(ns_path, domain, mark, &f);
  if (fd < 0) return throw_failure(env, &f);
  int rc = 0;
  if (set_int_option(fd, SOL_SOCKET, SO_REUSEADDR, 1) != 0) {
    rc = fail(&f, "setsockopt(SO_REUSEADDR)", where);
  } else if (reuse_port && set_int_option(fd, SOL_SOCKET, SO_REUSEPORT, 1) != 0) {
    rc = fail(&f, "setsockopt(SO_REUSEPORT)", where);
  } else if (transparent && domain == AF_INET && set_int_option(fd, SOL_IP, IP_TRANSPARENT, 1) != 0) {
    rc = fail(&f, "setsockopt(IP_TRANSPARENT)", where);
  } else if (transparent && domain == AF_INET6 && set_int_option(fd, SOL_IPV6, IPV6_TRANSPARENT, 1) != 0) {
    rc = fail(&f, "setsockopt(IPV6_TRANSPARENT)", where);
  } else if (domain == AF_INET6 && set_int_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1) != 0) {
    // v6-only so an IPv4 and an IPv6 listener can share a port, as the capture rules expect.
    rc = fail(&f, "setsockopt(IPV6_V6ONLY)", where);
  } else if (bind(fd, (struct sockaddr *)&addr, addr_len) != 0) {
    rc = fail(&f, "bind", where);
  } else if (listen(fd, (int)(backlog > INT_MAX ? INT_MAX : backlog)) != 0) {
    rc = fail(&f, "listen", where);
  }
  if (rc != 0) {
    close(fd);
    return throw_failure(env, &f);
  }
  napi_value result;
  NAPI_CALL(env, napi_create_int32(env, fd, &result));
  return result;
}

// originalDst(fd) -> { address, port, family }: where the client meant to go before NAT redirected it.
static napi_value js_original_dst(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 1, "originalDst");
  uint32_t fd_arg;
  if (!arg_uint32(env, argv[0], "fd", &fd_arg)) return NULL;
  int fd = (int)fd_arg;
  char where[32];
  snprintf(where, sizeof where, "fd %d", fd);

  failure f;
  struct sockaddr_storage local;
  socklen_t local_len = sizeof local;
  if (getsockname(fd, (struct sockaddr *)&local, &local_len) != 0) {
    fail(&f, "getsockname", where);
    return throw_failure(env, &f);
  }
  // An IPv4 client on a dual-stack socket is tracked by conntrack as IPv4.
  bool v4 = local.ss_family == AF_INET ||
            (local.ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *)&local)->sin6_addr));
  if (local.ss_family != AF_INET && local.ss_family != AF_INET6) {
    errno = EAFNOSUPPORT;
    fail(&f, "getsockname", where);
    return throw_failure(env, &f);
  }

  char address[INET6_ADDRSTRLEN];
  uint16_t port;
  int family;
  if (v4) {
    struct sockaddr_in dst;
    socklen_t len = sizeof dst;
    memset(&dst, 0, sizeof dst);
    if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &dst, &len) != 0) {
      fail(&f, "getsockopt(SO_ORIGINAL_DST)", where);
      return throw_failure(env, &f);
    }
    inet_ntop(AF_INET, &dst.sin_addr, address, sizeof address);
    port = ntohs(dst.sin_port);
    family = 4;
  } else {
    struct sockaddr_in6 dst;
    socklen_t len = sizeof dst;
    memset(&dst, 0, sizeof dst);
    if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &dst, &len) != 0) {
      fail(&f, "getsockopt(IP6T_SO_ORIGINAL_DST)", where);
      return throw_failure(env, &f);
    }
    inet_ntop(AF_INET6, &dst.sin6_addr, address, sizeof address);
    port = ntohs(dst.sin6_port);
    family = 6;
  }

  napi_value result, js_address, js_port, js_family;
  NAPI_CALL(env, napi_create_object(env, &result));
  NAPI_CALL(env, napi_create_string_utf8(env, address, NAPI_AUTO_LENGTH, &js_address));
  NAPI_CALL(env, napi_create_uint32(env, port, &js_port));
  NAPI_CALL(env, napi_create_uint32(env, (uint32_t)family, &js_family));
  NAPI_CALL(env, napi_set_named_property(env, result, "address", js_address));
  NAPI_CALL(env, napi_set_named_property(env, result, "port", js_port));
  NAPI_CALL(env, napi_set_named_property(env, result, "family", js_family));
  return result;
}

// setMark(fd, mark): capture rules skip packets carrying the agent's mark.
static napi_value js_set_mark(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 2, "setMark");
  uint32_t fd, mark;
  if (!arg_uint32(env, argv[0], "fd", &fd)) return NULL;
  if (!arg_uint32(env, argv[1], "mark", &mark)) return NULL;
  if (setsockopt((int)fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) {
    char where[32];
    snprintf(where, sizeof where, "fd %u", fd);
    failure f;
    fail(&f, "setsockopt(SO_MARK)", where);
    return throw_failure(env, &f);
  }
  return NULL;
}

// bindToDevice(fd, ifname): SO_BINDTODEVICE. The agent's connections to an app in eBPF capture mode are bound to lo,
// so the kernel reports them to the pod's sk_lookup program as arriving on lo (capture/routing.ts says why).
static napi_value js_bind_to_device(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 2, "bindToDevice");
  uint32_t fd;
  char ifname[IF_NAMESIZE];
  if (!arg_uint32(env, argv[0], "fd", &fd)) return NULL;
  if (!arg_string(env, argv[1], "ifname", ifname, sizeof ifname)) return NULL;
  if (setsockopt((int)fd, SOL_SOCKET, SO_BINDTODEVICE, ifname, (socklen_t)strlen(ifname)) != 0) {
    char where[32 + IF_NAMESIZE];
    snprintf(where, sizeof where, "fd %u to %s", fd, ifname);
    failure f;
    fail(&f, "setsockopt(SO_BINDTODEVICE)", where);
    return throw_failure(env, &f);
  }
  return NULL;
}

// Opens a file under /proc/sys/net while the JS thread is in the pod's netns: such a file belongs to the netns of
// the thread that opened it, so the write after returning home still lands in the pod.
static int open_in_netns(const char *ns_path, const char *file, failure *f) {
  int home = enter_netns(ns_path, f);
  if (home < 0) return -1;
  int fd = open(file, O_WRONLY | O_CLOEXEC);
  int open_errno = errno;
  leave_netns(home, ns_path);
  if (fd < 0) {
    errno = open_errno;
    return fail(f, "open", file);
  }
  return fd;
}

// setNetSysctlInNetns(nsPath, name, value): writes /proc/sys/net/<name> of the pod's netns (name like
// "ipv4/tcp_migrate_req"; only letters, digits, '_' and '/' inside, no "..").
static napi_value js_set_net_sysctl_in_netns(napi_env env, napi_callback_info info) {
  NAPI_ARGV(env, info, 3, "setNetSysctlInNetns");
  char ns_path[PATH_MAX];
  char name[128];
  char value[64];
  if (!arg_string(env, argv[0], "nsPath", ns_path, sizeof ns_path)) return NULL;
  if (!arg_string(env, argv[1], "name", name, sizeof name)) return NULL;
  if (!arg_string(env, argv[2], "value", value, sizeof value)) return NULL;
  for (const char *c = name; *c; c++) {
    bool ok = (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' || (*c == '/' && c != name && c[-1] != '/');
    if (!ok) {
      napi_throw_range_error(env, "EINVAL", "name must be a path under /proc/sys/net of letters, digits and '_'");
      return NULL;
    }
  }
  char file[PATH_MAX];
  snprintf(file, sizeof file, "/proc/sys/net/%s", name);
  failure f;
  int fd = open_in_netns(ns_path, file, &f);
  if (fd < 0) return throw_failure(env, &f);
  size_t len = strlen(value);
  ssize_t n = write(fd, value, len);
  if (n != (ssize_t)len) {
    if (n >= 0) errno = EIO;
    fail(&f, "write", file);
    close(fd);
    return throw_failure(env, &f);
  }
  close(fd);
  return NULL;
}

// releaseFreeMemory(): hands the C heap's free pages back to the kernel (glibc's malloc_trim) and says whether
// any were. A traffic burst leaves socket and TLS buffers freed inside malloc's arenas, counted in the RSS
// until malloc happens to reuse them; elsewhere than glibc there is nothing to do and the answer is false.
static napi_value js_release_free_memory(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
#ifdef __GLIBC__
  NAPI_CALL(env, napi_get_boolean(env, malloc_trim(0) == 1, &result));
#else
  NAPI_CALL(env, napi_get_boolean(env, false, &result));
#endif
  return result;
}

NAPI_MODULE_INIT() {
  NAPI_EXPORT_FUNCTION(env, exports, "socketInNetns", js_socket_in_netns);
  NAPI_EXPORT_FUNCTION(env, exports, "listenInNetns", js_listen_in_netns);
  NAPI_EXPORT_FUNCTION(env, exports, "originalDst", js_original_dst);
  NAPI_EXPORT_FUNCTION(env, exports, "setMark", js_set_mark);
  NAPI_EXPORT_FUNCTION(env, exports, "bindToDevice", js_bind_to_device);
  NAPI_EXPORT_FUNCTION(env, exports, "releaseFreeMemory", js_release_free_memory);
  NAPI_EXPORT_FUNCTION(env, exports, "setNetSysctlInNetns", js_set_net_sysctl_in_netns);
  return trellis_bpf_init(env, exports);
}
