// The same-node kernel splice: both sockets of an opaque same-node connection (the app's accepted on 15001 in the
// client's netns, the agent's to the server app in the server's netns) are in one sockhash with this stream verdict
// program, which sends every byte read from one out of the other, so no payload byte crosses into user space. The
// agent keeps the sockets (FIN and reset reach it as end and error, which it passes on itself: a redirect carries no
// FIN) and reads the byte counts here.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "same_node.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/** The sockets, keyed by their cookie. */
struct {
  __uint(type, BPF_MAP_TYPE_SOCKHASH);
  __uint(max_entries, TRELLIS_SAME_NODE_SOCKETS);
  __type(key, __u64);
  __type(value, __u32);
} same_node_sockets SEC(".maps");

/** Each socket's peer and counts; a socket without an entry is left to its reader (the agent, in user space). */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, TRELLIS_SAME_NODE_SOCKETS);
  __type(key, __u64);
  __type(value, struct trellis_same_node_peer);
} same_node_peers SEC(".maps");

SEC("sk_skb/stream_verdict")
int trellis_same_node(struct __sk_buff *skb) {
  __u64 cookie = bpf_get_socket_cookie(skb);
  struct trellis_same_node_peer *p = bpf_map_lookup_elem(&same_node_peers, &cookie);
  if (!p) return SK_PASS;
  __u32 len = skb->len;
  // A FIN alone comes as an empty skb: nothing to send on (the agent passes the FIN), and redirected it would make the
  // peer's backlog report EPIPE (it takes a send of 0 bytes for a broken pipe). The FIN itself is already the socket's.
  if (len == 0) return SK_DROP;
  long verdict = bpf_sk_redirect_hash(skb, &same_node_sockets, &p->peer, 0);
  if (verdict == SK_PASS) __sync_fetch_and_add(&p->bytes, len);
  else __sync_fetch_and_add(&p->dropped, len);
  return verdict;
}
