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
  gcc libc6-dev # the native addon (native/build.mjs calls cc; no node-gyp, no dependency builds anything)
  clang         # the BPF programs (native/bpf/*.bpf.c: clang -target bpf, CO-RE against vmlinux.h)
  llvm          # llvm-objdump -S native/build/*.bpf.o: a verifier error's instruction read against its C line
  bpftool       # vmlinux.h from the kernel's BTF, and the libbpf skeletons the addon embeds its BPF objects with
  libbpf-dev    # libbpf for the addon, linked dynamically (libbpf.so.1, with libelf1 and zlib1g it depends on): Debian's libbpf.a and libelf.a are not position-independent, so they cannot go into the addon
  ca-certificates
  buildah       # builds the image (npm run image: scripts/image.mjs)
  podman        # runs it in test/image, always with --network=none
  runc          # OCI runtime of both: Debian 12's crun refuses hosts with cgroup v1 and v2 controllers mixed
  debootstrap   # the base images debian:bookworm-slim and node:*-bookworm-slim, made here without a registry
  time          # /usr/bin/time -v: scripts/build-k8s.mjs reports each step's peak memory with it
  sslscan       # test/e2e/tls-scan.test.ts: the HBONE listener checked from outside with a real TLS scanner
  prometheus    # the lab's Prometheus (`trellis lab up --prometheus`, the demo) and promtool (rules and /metrics checked)
  nginx-light redis-server redis-tools # test/e2e/source-ip.test.ts: real apps behind the mesh see the caller's address
  chromium      # test/e2e/dashboard.test.ts: the dashboard page in a real browser (playwright-core drives /usr/bin/chromium)
)
# Go 1.26+ (with the Go module proxy) is a property of the machine, not a package here: scripts/build-k8s.mjs builds
# the control plane of the cluster-mode tests with it and says so when it is missing.
command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm) # any npm: Node 24 itself comes from the `node` devDependency
had_prometheus=$(dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -c 'ok installed' || true)
had_nginx=$(dpkg-query -W -f='${Status}' nginx-light 2>/dev/null | grep -c 'ok installed' || true)
had_redis=$(dpkg-query -W -f='${Status}' redis-server 2>/dev/null | grep -c 'ok installed' || true)
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
# Debian's package starts a Prometheus of its own on :9090 of the host where systemd runs. Nothing of Trellis uses it
# (the lab starts one in its own netns): when this script installed the package, that service is stopped and disabled.
if [ "$had_prometheus" = 0 ] && [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
# The same for nginx and redis, which the tests start inside lab pods only.
if [ "$had_nginx" = 0 ] && [ -d /run/systemd/system ]; then
  systemctl disable --now nginx.service >/dev/null 2>&1 || true
fi
if [ "$had_redis" = 0 ] && [ -d /run/systemd/system ]; then
  systemctl disable --now redis-server.service >/dev/null 2>&1 || true
fi
# Container defaults that keep the host's own network namespace untouched and work on this kind of host. Debian's
# podman ships a CNI bridge config: a container or a buildah RUN on the default network would add a bridge,
# iptables rules and ip_forward to the host. Here the default is no network, and the CNI plugin directory is
# empty, so a bridge network fails instead (buildah ignores netns; scripts/image.mjs passes
# --network=host or none itself). Limits: podman cannot raise them above the host's (nproc above 32768 fails too).
# Remove /etc/containers/containers.conf.d/50-trellis.conf to undo.
mkdir -p /etc/containers/containers.conf.d /usr/local/lib/trellis-no-cni
nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
if [ "$nofile" = unlimited ] || [ "$nofile" -gt 1048576 ]; then nofile=1048576; fi
if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
cat >/etc/containers/containers.conf.d/50-trellis.conf <<EOF
# Written by trellis scripts/setup-debian.sh (see there).
[containers]
netns = "none"
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
[network]
cni_plugin_dirs = ["/usr/local/lib/trellis-no-cni"]
EOF
echo "setup: OS packages installed (${#pkgs[@]})"
