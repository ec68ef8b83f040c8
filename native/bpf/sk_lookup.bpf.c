// Inbound capture without NAT: attached to one pod's network namespace, hands every incoming TCP connection to the
// agent's inbound listener (15006) in that netns, so the accepted socket keeps the address the client dialled.
// Connections from inside the pod, to the exempt ports (HBONE, 15008) and from the node's probe sources go where they
// were going.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "sk_lookup.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define LOOPBACK_IFINDEX 1 /* lo is interface 1 in every network namespace */
#define AF_INET6 10

/** Written by the loader before load; constant to the verifier. */
const volatile struct trellis_sk_lookup_config settings = {};

/** Slot 0: the agent's inbound listener in this netns, put there by the loader from the listener's fd. */
struct {
  __uint(type, BPF_MAP_TYPE_SOCKMAP);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, __u64);
} listener SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, TRELLIS_SKL_VERDICTS);
  __type(key, __u32);
  __type(value, __u64);
} verdicts SEC(".maps");

static __always_inline void count(__u32 verdict) {
  __u64 *n = bpf_map_lookup_elem(&verdicts, &verdict);
  if (n) *n += 1;
}

/**
 * The connection comes from this netns' own address: the kernel drops a packet from outside that claims a local
 * source (a martian, with accept_local off as it is by default), so such a connection started inside the pod.
 */
static __always_inline bool from_own_address(const struct bpf_sk_lookup *ctx) {
  if (ctx->family == AF_INET6) {
    return ctx->remote_ip6[0] == ctx->local_ip6[0] && ctx->remote_ip6[1] == ctx->local_ip6[1] &&
           ctx->remote_ip6[2] == ctx->local_ip6[2] && ctx->remote_ip6[3] == ctx->local_ip6[3];
  }
  return ctx->remote_ip4 == ctx->local_ip4;
}

static __always_inline bool from_probe_source(const struct bpf_sk_lookup *ctx) {
  if (ctx->family == AF_INET6) {
    for (__u32 i = 0; i < TRELLIS_MAX_PROBE_SOURCES && i < settings.probe6_count; i++) {
      if (ctx->remote_ip6[0] == settings.probe6[i][0] && ctx->remote_ip6[1] == settings.probe6[i][1] &&
          ctx->remote_ip6[2] == settings.probe6[i][2] && ctx->remote_ip6[3] == settings.probe6[i][3])
        return true;
    }
    return false;
  }
  for (__u32 i = 0; i < TRELLIS_MAX_PROBE_SOURCES && i < settings.probe4_count; i++) {
    if (ctx->remote_ip4 == settings.probe4[i]) return true;
  }
  return false;
}

SEC("sk_lookup")
int trellis_inbound(struct bpf_sk_lookup *ctx) {
  if (ctx->protocol != IPPROTO_TCP) return SK_PASS;
  // From inside the pod: the pod talking to itself, and the agent's own connections to the app. Those from the pod's
  // address are told by their source; those keeping the caller's address are bound to lo and routed as arriving on
  // it (capture/routing.ts), which ingress_ifindex (Linux 5.17+) shows.
  if (ctx->ingress_ifindex == LOOPBACK_IFINDEX || from_own_address(ctx)) {
    count(TRELLIS_SKL_LOCAL);
    return SK_PASS;
  }
  for (__u32 i = 0; i < TRELLIS_MAX_EXEMPT_PORTS && i < settings.exempt_port_count; i++) {
    if (ctx->local_port == settings.exempt_ports[i]) {
      count(TRELLIS_SKL_EXEMPT_PORT);
      return SK_PASS;
    }
  }
  if (from_probe_source(ctx)) {
    count(TRELLIS_SKL_PROBE_SOURCE);
    return SK_PASS;
  }
  __u32 zero = 0;
  struct bpf_sock *sk = bpf_map_lookup_elem(&listener, &zero);
  if (!sk) {
    // Fail closed: without the agent's listener the lookup fails and the client is refused (a reset, as a redirect
    // to a closed 15006 would be), never handed to the app around the mesh.
    count(TRELLIS_SKL_NO_LISTENER);
    return SK_DROP;
  }
  // REPLACE: during a hand-over the newer agent's program runs last and its listener is chosen; both agents'
  // listeners share one SO_REUSEPORT group, among which the kernel then spreads connections as without BPF.
  long err = bpf_sk_assign(ctx, sk, BPF_SK_LOOKUP_F_REPLACE);
  bpf_sk_release(sk);
  if (err) {
    // An IPv6 connection to the IPv4 listener (the agent listens on IPv4 only today): refused as above.
    count(TRELLIS_SKL_REFUSED);
    return SK_DROP;
  }
  count(TRELLIS_SKL_STEERED);
  return SK_PASS;
}
