#!/usr/bin/env bash
# Installs the OS packages Trellis needs on Debian (run as root). Used by the README's set-up and by CI.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(
  iproute2      # network namespaces and veth for the lab
  nftables      # capture rules inside pods, ClusterIP emulation in the lab
  iptables      # kept for hosts whose tooling expects it (not used by the agent itself)
  util-linux    # nsenter
  procps        # ps/kill used by the lab's sweep
  tcpdump       # wire checks in the end-to-end tests
  gcc libc6-dev # the native addon
  python3 make  # node-gyp style builds of dependencies, if any
  ca-certificates
)
command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm) # any npm: Node 24 itself comes from the `node` devDependency
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
echo "setup: OS packages installed (${#pkgs[@]})"
