// Shared by the outbound programs (outbound.bpf.c) and their loader (native/bpf.c): the settings the loader writes
// into the programs' read-only data, a meshed pod's entry, the original destination as recorded and as the agent looks
// it up, and the verdicts both read. Types come from the includer (vmlinux.h in the program, <linux/types.h> in the
// loader).
#ifndef TRELLIS_OUTBOUND_H
#define TRELLIS_OUTBOUND_H

/** Meshed pods the programs know at most (the agent's pods on its node). */
#define TRELLIS_OUT_PODS 4096
/** Original destinations held at most, per socket and per accepted port; the least recently used go first. */
#define TRELLIS_OUT_ORIGINALS 65536
/** Own addresses per family of a pod that its connections reach directly (dual stack: one each, room for two). */
#define TRELLIS_OUT_POD_IPS 2

struct trellis_out_config {
  /**
   * The netns cookie of the agent that loaded the programs: a successor in the same netns (a hand-over) finds them on
   * the cgroup by it and shares their maps of original destinations. First, so the loader reads it at offset 0.
   */
  __u64 owner_netns;
  /** The agent's socket marks: its own connections are never redirected. */
  __u32 agent_mark;
  __u32 transparent_mark;
  /** The agent's outbound listener port in every pod (127.0.0.1), host byte order. */
  __u32 port;
  __u32 pad;
};

/** A meshed pod, keyed by its netns cookie: its own addresses, which its connections reach directly. */
struct trellis_out_pod {
  /** Network byte order. */
  __u32 ip4[TRELLIS_OUT_POD_IPS];
  __u32 ip6[TRELLIS_OUT_POD_IPS][4];
  __u32 ip4_count;
  __u32 ip6_count;
};

/** Where a redirected connection was going, keyed by its socket's cookie and, once established, by its port. */
struct trellis_out_original {
  /** The pod's netns cookie. */
  __u64 netns;
  /** IPv4, network byte order. */
  __u32 ip4;
  /** Network byte order. */
  __u16 port;
  /** 4: dialled as IPv4; 6: as an IPv4-mapped IPv6 address (an AF_INET6 socket), which getpeername gives back. */
  __u16 family;
};

/** What the agent sees of an accepted connection on its outbound listener: the pod's netns and the client's port. */
struct trellis_out_key {
  __u64 netns;
  /** The client's port, host byte order. */
  __u32 port;
  __u32 pad;
};

/** What connect4/connect6 did with a TCP connect from a meshed pod; one per-CPU counter each, summed by the loader. */
enum trellis_out_verdict {
  /** Sent to the agent's outbound listener, the original destination recorded. */
  TRELLIS_OUT_REDIRECTED = 0,
  /** A socket of the agent (its mark): left alone. */
  TRELLIS_OUT_AGENT,
  /** To loopback or the pod's own address: left alone (nft mode exempts `oif lo` alike). */
  TRELLIS_OUT_LOCAL,
  /** IPv6: sent to [::1] on the listener's port, where nothing listens (refused, as in nft mode). */
  TRELLIS_OUT_IPV6_REFUSED,
  /** The record could not be written: the connect fails (EPERM), never goes around the mesh. */
  TRELLIS_OUT_NO_RECORD,
  TRELLIS_OUT_VERDICTS,
};

#endif
