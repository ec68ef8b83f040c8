# Trellis agent image: build the TypeScript and the native addon, then a small Node 24 runtime with nft/nsenter.
FROM node:24-bookworm-slim AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev python3 make && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY scripts ./scripts
COPY native ./native
COPY agent ./agent
RUN npm run build && npm prune --omit=dev

FROM node:24-bookworm-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends nftables iproute2 util-linux && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/trellis
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/native/build/trellis.node ./native/build/trellis.node
ENTRYPOINT ["node", "/opt/trellis/dist/agent/main.js"]
CMD ["agent", "--help"]
