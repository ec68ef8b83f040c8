// Outbound capture without NAT: attached once to a cgroup root (every pod's processes below it), these programs send
// the TCP connects of meshed pods (told by their netns cookie, in `pods`) to the agent's outbound listener
// (127.0.0.1:15001 in the pod), remember where each was going, and make the app see that address as its peer. The
// agent reads the original destination of an accepted connection by the pod's netns and the client's port. Sockets
// of any other netns, UDP, the agent's own (its marks), loopback and the pod's own address are left as they are.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "outbound.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define TCP_CLOSE 7

/** Written by the loader before load; constant to the verifier. */
const volatile struct trellis_out_config settings = {};

/** Meshed pods by netns cookie, filled by the agent as it enrols them. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, TRELLIS_OUT_PODS);
  __type(key, __u64);
  __type(value, struct trellis_out_pod);
} pods SEC(".maps");

/**
 * Original destinations by socket cookie, from connect to close: getpeername reads them for the socket's whole life.
 * Shared with a successor agent during a hand-over (its loader reuses this map).
 */
struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, TRELLIS_OUT_ORIGINALS);
  __type(key, __u64);
  __type(value, struct trellis_out_original);
} by_socket SEC(".maps");

/** The same, by what the agent sees of the accepted socket; the agent deletes each entry as it reads it. Shared too. */
struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, TRELLIS_OUT_ORIGINALS);
  __type(key, struct trellis_out_key);
  __type(value, struct trellis_out_original);
} by_port SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, TRELLIS_OUT_VERDICTS);
  __type(key, __u32);
  __type(value, __u64);
} out_verdicts SEC(".maps");

static __always_inline int count(__u32 verdict, int ret) {
  __u64 *n = bpf_map_lookup_elem(&out_verdicts, &verdict);
  if (n) *n += 1;
  return ret;
}

static __always_inline bool agent_socket(struct bpf_sock_addr *ctx) {
  struct bpf_sock *sk = ctx->sk;
  if (!sk) return false;
  __u32 mark = sk->mark;
  return mark != 0 && (mark == settings.agent_mark || mark == settings.transparent_mark);
}

static __always_inline bool local4(const struct trellis_out_pod *pod, __u32 ip4) {
  // 0.0.0.0 reaches the netns itself, as 127/8 does.
  if (ip4 == 0 || (bpf_ntohl(ip4) >> 24) == 127) return true;
  for (__u32 i = 0; i < TRELLIS_OUT_POD_IPS && i < pod->ip4_count; i++) {
    if (pod->ip4[i] == ip4) return true;
  }
  return false;
}

/** Records where the socket was going; false when the map refused the entry. */
static __always_inline bool record(struct bpf_sock_addr *ctx, __u64 netns, __u32 ip4, __u16 family) {
  __u64 cookie = bpf_get_socket_cookie(ctx);
  struct trellis_out_original o = {.netns = netns, .ip4 = ip4, .port = (__u16)ctx->user_port, .family = family};
  return bpf_map_update_elem(&by_socket, &cookie, &o, BPF_ANY) == 0;
}

SEC("cgroup/connect4")
int trellis_conn4(struct bpf_sock_addr *ctx) {
  if (ctx->type != SOCK_STREAM) return 1;
  __u64 netns = bpf_get_netns_cookie(ctx);
  struct trellis_out_pod *pod = bpf_map_lookup_elem(&pods, &netns);
  // Not a meshed pod's (the host, another node, another lab): untouched, before anything else is read.
  if (!pod) return 1;
  if (agent_socket(ctx)) return count(TRELLIS_OUT_AGENT, 1);
  __u32 ip4 = ctx->user_ip4;
  if (local4(pod, ip4)) return count(TRELLIS_OUT_LOCAL, 1);
  // Fail closed: without a record the agent could not tell where the connection goes; refused rather than let out.
  if (!record(ctx, netns, ip4, 4)) return count(TRELLIS_OUT_NO_RECORD, 0);
  ctx->user_ip4 = bpf_htonl(0x7f000001);
  ctx->user_port = bpf_htons((__u16)settings.port);
  return count(TRELLIS_OUT_REDIRECTED, 1);
}

/**
 * IPv6 sockets: an IPv4-mapped address (::ffff:a.b.c.d) is IPv4 on the wire and is captured as connect4 does. Real
 * IPv6 goes to [::1] on the listener's port, where nothing listens (the agent listens on IPv4 only): refused, as the
 * nft redirect does it, never sent around the mesh.
 */
SEC("cgroup/connect6")
int trellis_conn6(struct bpf_sock_addr *ctx) {
  if (ctx->type != SOCK_STREAM) return 1;
  __u64 netns = bpf_get_netns_cookie(ctx);
  struct trellis_out_pod *pod = bpf_map_lookup_elem(&pods, &netns);
  if (!pod) return 1;
  if (agent_socket(ctx)) return count(TRELLIS_OUT_AGENT, 1);
  __u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
  if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff)) {
    if (local4(pod, w3)) return count(TRELLIS_OUT_LOCAL, 1);
    if (!record(ctx, netns, w3, 6)) return count(TRELLIS_OUT_NO_RECORD, 0);
    ctx->user_ip6[3] = bpf_htonl(0x7f000001);
    ctx->user_port = bpf_htons((__u16)settings.port);
    return count(TRELLIS_OUT_REDIRECTED, 1);
  }
  // :: and ::1 reach the netns itself; so does the pod's own address.
  if (w0 == 0 && w1 == 0 && w2 == 0 && (w3 == 0 || w3 == bpf_htonl(1))) return count(TRELLIS_OUT_LOCAL, 1);
  for (__u32 i = 0; i < TRELLIS_OUT_POD_IPS && i < pod->ip6_count; i++) {
    if (pod->ip6[i][0] == w0 && pod->ip6[i][1] == w1 && pod->ip6[i][2] == w2 && pod->ip6[i][3] == w3) return count(TRELLIS_OUT_LOCAL, 1);
  }
  ctx->user_ip6[0] = 0;
  ctx->user_ip6[1] = 0;
  ctx->user_ip6[2] = 0;
  ctx->user_ip6[3] = bpf_htonl(1);
  ctx->user_port = bpf_htons((__u16)settings.port);
  return count(TRELLIS_OUT_IPV6_REFUSED, 1);
}

/** The app asks whom it is connected to: the address it dialled, not the agent's listener. */
SEC("cgroup/getpeername4")
int trellis_peer4(struct bpf_sock_addr *ctx) {
  __u64 cookie = bpf_get_socket_cookie(ctx);
  struct trellis_out_original *o = bpf_map_lookup_elem(&by_socket, &cookie);
  if (o && o->family == 4) {
    ctx->user_ip4 = o->ip4;
    ctx->user_port = o->port;
  }
  return 1;
}

SEC("cgroup/getpeername6")
int trellis_peer6(struct bpf_sock_addr *ctx) {
  __u64 cookie = bpf_get_socket_cookie(ctx);
  struct trellis_out_original *o = bpf_map_lookup_elem(&by_socket, &cookie);
  if (o && o->family == 6) {
    ctx->user_ip6[0] = 0;
    ctx->user_ip6[1] = 0;
    ctx->user_ip6[2] = bpf_htonl(0xffff);
    ctx->user_ip6[3] = o->ip4;
    ctx->user_port = o->port;
  }
  return 1;
}

/**
 * A redirected socket's life: as it sends its SYN, its close is asked to be reported (so its record goes with it, even
 * if the connect fails); once established, before its ACK leaves (so before the agent can accept it), the record is
 * filed under what the agent sees: the pod's netns and the client's port.
 */
SEC("sockops")
int trellis_outops(struct bpf_sock_ops *skops) {
  __u64 cookie;
  struct trellis_out_original *o;
  switch (skops->op) {
  case BPF_SOCK_OPS_TCP_CONNECT_CB:
    cookie = bpf_get_socket_cookie(skops);
    if (bpf_map_lookup_elem(&by_socket, &cookie)) bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
    break;
  case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
    cookie = bpf_get_socket_cookie(skops);
    o = bpf_map_lookup_elem(&by_socket, &cookie);
    if (o) {
      struct trellis_out_key key = {.netns = o->netns, .port = skops->local_port};
      struct trellis_out_original copy = *o;
      bpf_map_update_elem(&by_port, &key, &copy, BPF_ANY);
    }
    break;
  case BPF_SOCK_OPS_STATE_CB:
    if (skops->args[1] == TCP_CLOSE) {
      cookie = bpf_get_socket_cookie(skops);
      bpf_map_delete_elem(&by_socket, &cookie);
    }
    break;
  }
  return 1;
}
