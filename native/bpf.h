// The eBPF half of the addon (bpf.c): adds its functions to the module's exports.
#ifndef TRELLIS_BPF_H
#define TRELLIS_BPF_H

#include <node_api.h>

/**
 * Adds bpfProbe, skLookupAttach, skLookupSetListener, skLookupReattach, skLookupVerdicts, skLookupIds, skLookupClose, tcpHealthAttach,
 * tcpHealthReattach, tcpHealthIds, tcpHealthClose, tcpStatsRead, tcpStatsForget, socketCookie, outboundAttach,
 * outboundReattach, outboundIds, outboundSetPod, outboundDeletePod, outboundVerdicts, outboundClose,
 * outboundOriginalDst, outboundFindMap, socketNetnsCookie, sameNodeOpen, sameNodeAdd, sameNodeCounts, sameNodeIds,
 * sameNodeClose, socketQueues, socketTake, socketError and socketPoke.
 */
napi_value trellis_bpf_init(napi_env env, napi_value exports);

#endif
