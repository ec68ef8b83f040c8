// Shared by the same-node stream verdict program (same_node.bpf.c) and its loader (native/bpf.c): what the program
// keeps per socket of a same-node connection, keyed by the socket's cookie. Types come from the includer (vmlinux.h in
// the program, <linux/types.h> in the loader).
#ifndef TRELLIS_SAME_NODE_H
#define TRELLIS_SAME_NODE_H

/** Sockets one agent thread may hand to the kernel at once (two per connection). */
#define TRELLIS_SAME_NODE_SOCKETS 65536

struct trellis_same_node_peer {
  /** The cookie of the socket this one's bytes are sent out of. */
  __u64 peer;
  /** Bytes read from this socket and sent out of the peer. */
  __u64 bytes;
  /** Bytes read from this socket that could not be sent on (the peer had left the map): lost, the connection is broken. */
  __u64 dropped;
};

#endif
