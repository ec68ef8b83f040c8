# Trellis image (agent, identity service, CNI installer): build the TypeScript, the native addon and the static CNI
# plugin, then a small runtime of Debian slim + the Node 24 binary + nftables. Size estimate: docs/install.md.
ARG NODE_VERSION=24.21.0

FROM node:${NODE_VERSION}-bookworm-slim AS build
# libc6-dev carries libc.a, which the static trellis-cni links against.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends gcc libc6-dev python3 make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY scripts ./scripts
COPY native ./native
COPY agent ./agent
# Builds dist/, native/build/trellis.node and native/build/trellis-cni, then keeps only runtime dependencies.
# Type declarations and source maps of dependencies are never loaded at run time (about 43 MiB).
# native/build is rebuilt here even if the context carried one: it must link against this image's libc.
RUN rm -rf native/build \
 && npm run build \
 && test -x native/build/trellis-cni \
 && npm prune --omit=dev --no-audit --no-fund \
 && find node_modules -type f \( -name '*.map' -o -name '*.d.ts' -o -name '*.d.mts' -o -name '*.d.cts' \) -delete

# The runtime needs only the node binary, not npm, corepack or yarn from the Node image.
FROM debian:bookworm-slim
# nftables: the capture rules (nft -f inside each pod's netns); nsenter comes with util-linux, already in the base.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends nftables \
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
