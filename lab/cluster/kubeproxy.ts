// ClusterIP emulation (kube-proxy's job) for one node netns: one nft table, replaced in one transaction.
// Traffic from the node's pods (prerouting) and from the node itself (output) is DNATed to a random ready endpoint.
import type { LabNode, LabPlan } from './plan.js';
import { FABRIC_NET, INTERNET_NET, KUBE_TABLE, POD_NET, SERVICE_NET } from './names.js';

export function kubeProxyRuleset(plan: LabPlan, node: LabNode): string {
  const local = plan.pods.filter((p) => p.node === node.name);
  const dnat = plan.vips
    .filter((v) => v.backends.length > 0)
    .map((v) => {
      const map = v.backends.map((b, k) => `${k} : ${b.ip} . ${b.port}`).join(', ');
      return (
        `    ip daddr ${v.clusterIP} tcp dport ${v.port} ` +
        `dnat ip to numgen random mod ${v.backends.length} map { ${map} } comment "${v.service}:${v.port}"`
      );
    });
  const hairpin = local.map((p) => `${p.ip} . ${p.ip}`).join(', ');
  return [
    // Declaring the table first makes the delete valid when it does not exist yet.
    `table ip ${KUBE_TABLE} {}`,
    `delete table ip ${KUBE_TABLE}`,
    `table ip ${KUBE_TABLE} {`,
    // A pod reaching itself through a VIP: without SNAT the reply would never leave the pod.
    '  set hairpin {',
    '    type ipv4_addr . ipv4_addr',
    ...(hairpin ? [`    elements = { ${hairpin} }`] : []),
    '  }',
    '  chain services {',
    ...dnat,
    '  }',
    '  chain prerouting {',
    '    type nat hook prerouting priority dstnat; policy accept;',
    '    jump services',
    '  }',
    '  chain output {',
    '    type nat hook output priority -100; policy accept;',
    '    jump services',
    '  }',
    '  chain postrouting {',
    '    type nat hook postrouting priority srcnat; policy accept;',
    `    ct status dnat ip saddr . ip daddr @hairpin snat ip to ${node.gatewayIp}`,
    '  }',
    // A VIP left untranslated (no endpoint, unknown port) is refused at once, like kube-proxy does;
    // anything outside the lab is unreachable, so no lab traffic ever heads for the host (the lab's internet is in the
    // lab: routed to its netns when the lab has one, unroutable from the node otherwise).
    '  chain forward {',
    '    type filter hook forward priority filter; policy accept;',
    `    ip daddr ${SERVICE_NET} meta l4proto tcp reject with tcp reset`,
    `    ip daddr != { ${POD_NET}, ${FABRIC_NET}, ${INTERNET_NET} } reject with icmp type net-unreachable`,
    '  }',
    '  chain local-out {',
    '    type filter hook output priority filter; policy accept;',
    `    ip daddr ${SERVICE_NET} meta l4proto tcp reject with tcp reset`,
    `    ip daddr ${SERVICE_NET} reject`,
    '  }',
    '}',
    '',
  ].join('\n');
}
