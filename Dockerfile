# Trellis image (agent, identity service, CNI installer): build the TypeScript, the native addon and the static CNI
# plugin, then a small runtime of Debian slim + the Node 24 binary + nftables. Build it with `npm run image`
# (scripts/image.mjs: buildah, no registry needed); size and build time: docs/install.md.
ARG NODE_VERSION=24.21.0

FROM node:${NODE_VERSION}-bookworm-slim AS build
# The native build is one cc call per target (native/build.mjs, no node-gyp): gcc and libc6-dev (with libc.a, which
# the static trellis-cni links against); for the BPF programs clang and bpftool (vmlinux.h from the build machine's
# /sys/kernel/btf/vmlinux: CO-RE relocates the object for the kernel it runs on) and libbpf-dev, which the addon links.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends gcc libc6-dev clang bpftool libbpf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: no dependency needs its install script. The `node` devDependency's would download a second
# Node binary (this image already has the one NODE_VERSION names) and protobufjs 7's only prints a version hint.
# Behind a TLS-intercepting proxy, its CA comes in as the build secret npm-ca (scripts/image.mjs passes the host's
# extra CAs): mounted for this RUN only, never part of a layer. Without the secret the step runs as it is.
RUN --mount=type=secret,id=npm-ca,required=false \
    if [ -s /run/secrets/npm-ca ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/npm-ca; fi \
 && npm ci --ignore-scripts --no-audit --no-fund --no-update-notifier
# tsconfig*.json: tsconfig.json extends tsconfig.base.json. Only the two scripts build:agent runs are copied.
COPY tsconfig*.json ./
COPY scripts/check-node.mjs scripts/copy-assets.mjs ./scripts/
COPY native ./native
COPY agent ./agent
# build:agent builds dist/agent (never the lab harness), native/build/trellis.node and native/build/trellis-cni;
# then only runtime dependencies are kept. Type declarations (with the @types packages that
# @kubernetes/client-node lists as dependencies), source maps of dependencies, tsc's build info and the empty
# scope folders npm prune leaves are never loaded at run time (about 43 MiB).
# native/build is rebuilt here even if the context carried one: it must link against this image's libc.
RUN rm -rf native/build \
 && npm run build:agent \
 && test -x native/build/trellis-cni \
 && test ! -e dist/lab \
 && npm prune --omit=dev --ignore-scripts --no-audit --no-fund \
 && find node_modules -type f \( -name '*.map' -o -name '*.d.ts' -o -name '*.d.mts' -o -name '*.d.cts' \) -delete \
 && find node_modules -type d -name '@types' -prune -exec rm -rf {} + \
 && find node_modules -mindepth 1 -type d -empty -delete \
 && find dist \( -name '*.d.ts' -o -name '*.tsbuildinfo' \) -delete

# The runtime needs only the node binary, not npm, corepack or yarn from the Node image.
FROM debian:bookworm-slim
# nftables: the capture rules (nft -f inside each pod's netns); nsenter comes with util-linux, already in the base.
# libbpf1 (and the libelf1 it brings; zlib1g is in the base): the addon's libbpf, linked dynamically because Debian's
# libbpf.a and libelf.a are not position-independent and cannot go into a shared object.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends nftables libbpf1 \
 && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
 && groupadd --gid 1000 trellis \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin trellis
COPY --from=build /usr/local/bin/node /usr/local/bin/node
WORKDIR /opt/trellis
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/native/build/trellis.node ./native/build/trellis.node
# The CNI plugin and its installer, used by the DaemonSet's install-cni and cni-watch containers.
COPY --from=build /src/native/build/trellis-cni /opt/trellis/cni/trellis-cni
COPY manifests/cni/install-cni.mjs /opt/trellis/cni/install-cni.mjs
ENV NODE_ENV=production
ENTRYPOINT ["node", "/opt/trellis/dist/agent/main.js"]
CMD ["--help"]
