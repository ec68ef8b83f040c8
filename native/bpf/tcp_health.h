// Shared by the sockops program (tcp_health.bpf.c) and its loader (native/bpf.c): what the program keeps per TCP
// socket of the agent's cgroup, keyed by the socket's cookie. Types come from the includer (vmlinux.h in the program,
// <linux/types.h> in the loader).
#ifndef TRELLIS_TCP_HEALTH_H
#define TRELLIS_TCP_HEALTH_H

/** Sockets the map holds at most; the least recently updated goes first when it is full (an LRU hash). */
#define TRELLIS_TCP_HEALTH_ENTRIES 65536

struct trellis_tcp_stats {
  /** The kernel's smoothed RTT at the last sample, microseconds. */
  __u32 srtt_us;
  /** Segments retransmitted since the connection was established. */
  __u32 retrans;
  /** RTT samples seen (0: no RTT measured yet, srtt_us is the handshake's). */
  __u32 rtt_samples;
  __u32 pad;
};

#endif
