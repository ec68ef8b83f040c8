// TCP health of the agent's own connections: attached to the agent's cgroup (v2), it keeps for every TCP socket of
// that cgroup its smoothed RTT and its retransmissions, keyed by the socket's cookie. The agent reads a connection's
// entry when the connection ends (and deletes it); entries it never reads are the first to go when the map is full.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "tcp_health.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TCP_CLOSE 7

struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, TRELLIS_TCP_HEALTH_ENTRIES);
  __type(key, __u64);
  __type(value, struct trellis_tcp_stats);
} tcp_stats SEC(".maps");

/** The socket's entry, made when it is established; NULL for a socket established before the program was there. */
static __always_inline struct trellis_tcp_stats *entry(struct bpf_sock_ops *skops, bool create) {
  __u64 cookie = bpf_get_socket_cookie(skops);
  struct trellis_tcp_stats *s = bpf_map_lookup_elem(&tcp_stats, &cookie);
  if (s || !create) return s;
  struct trellis_tcp_stats fresh = {};
  bpf_map_update_elem(&tcp_stats, &cookie, &fresh, BPF_NOEXIST);
  return bpf_map_lookup_elem(&tcp_stats, &cookie);
}

/** The kernel's own figures: srtt_us is kept times 8; total_retrans counts what went out again so far. */
static __always_inline void update(struct bpf_sock_ops *skops, struct trellis_tcp_stats *s) {
  s->srtt_us = skops->srtt_us >> 3;
  if (skops->total_retrans > s->retrans) s->retrans = skops->total_retrans;
}

SEC("sockops")
int trellis_tcp_health(struct bpf_sock_ops *skops) {
  struct trellis_tcp_stats *s;
  switch (skops->op) {
  case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
  case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
    // From now on the kernel calls the program at each RTT sample, each retransmission and each state change.
    bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_RTT_CB_FLAG | BPF_SOCK_OPS_RETRANS_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG);
    s = entry(skops, true);
    if (s) update(skops, s);
    break;
  case BPF_SOCK_OPS_RTT_CB:
    s = entry(skops, false);
    if (s) {
      update(skops, s);
      s->rtt_samples += 1;
    }
    break;
  case BPF_SOCK_OPS_RETRANS_CB:
    // Called before the kernel counts it in total_retrans: args are the sequence, the segments and the error.
    s = entry(skops, false);
    if (s && skops->args[2] == 0) s->retrans += skops->args[1];
    break;
  case BPF_SOCK_OPS_STATE_CB:
    // The last figures as the socket closes (args[1] is the new state): the agent may read them after its close.
    s = entry(skops, false);
    if (s && skops->args[1] == TCP_CLOSE) update(skops, s);
    break;
  }
  return 1;
}
