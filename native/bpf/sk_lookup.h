// Shared by the sk_lookup program (sk_lookup.bpf.c) and its loader (native/bpf.c): the settings the loader writes
// into the program's read-only data before it loads, and the counters both read. Types come from the includer
// (vmlinux.h in the program, <linux/types.h> in the loader).
#ifndef TRELLIS_SK_LOOKUP_H
#define TRELLIS_SK_LOOKUP_H

/** Most probe source addresses per family the program exempts (the node's addresses toward its pods). */
#define TRELLIS_MAX_PROBE_SOURCES 8
/** Most local ports the program leaves alone (the agent's HBONE port 15008). */
#define TRELLIS_MAX_EXEMPT_PORTS 4

struct trellis_sk_lookup_config {
  /** IPv4 probe sources, network byte order. */
  __u32 probe4[TRELLIS_MAX_PROBE_SOURCES];
  /** IPv6 probe sources, network byte order, four words each. */
  __u32 probe6[TRELLIS_MAX_PROBE_SOURCES][4];
  __u32 probe4_count;
  __u32 probe6_count;
  /** Local ports never steered, host byte order. */
  __u32 exempt_ports[TRELLIS_MAX_EXEMPT_PORTS];
  __u32 exempt_port_count;
};

/** What the program did with a TCP lookup; one per-CPU counter each, summed by the loader. */
enum trellis_sk_lookup_verdict {
  /** Handed to the agent's listener. */
  TRELLIS_SKL_STEERED = 0,
  /** From inside the pod (the pod talking to itself, the agent's own connections to the app): left alone. */
  TRELLIS_SKL_LOCAL,
  /** To an exempt port (HBONE): left alone. */
  TRELLIS_SKL_EXEMPT_PORT,
  /** From a probe source: left alone, so the node's health probes reach the app. */
  TRELLIS_SKL_PROBE_SOURCE,
  /** No listener in the map (the agent's closed, or not yet filled): refused, never sent around the mesh. */
  TRELLIS_SKL_NO_LISTENER,
  /** The kernel refused the listener for this lookup (an IPv6 connection to the IPv4 listener): refused. */
  TRELLIS_SKL_REFUSED,
  TRELLIS_SKL_VERDICTS,
};

#endif
