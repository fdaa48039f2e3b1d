# ses-email-service: SMTP relay for Amazon SES.
#
#   docker build -t ses-email-service .
#   docker run -p 1025:1025 -p 9464:9464 -v ses-spool:/var/spool/ses-relay ses-email-service
#   docker exec <container> ses-relay queue summary        (the operator's tools, on PATH)
#
# The base image is a build argument so that CI (or an air-gapped host) can substitute its own Debian +
# Node image; see scripts/container-base-image.sh and docs/operations.md.
ARG NODE_IMAGE=node:22-bookworm-slim

# --- build: dev dependencies, native toolchain, TypeScript -> dist/ ---------------------------------
FROM ${NODE_IMAGE} AS build

# better-sqlite3 is a native addon: prebuilt binaries are fetched when reachable, otherwise node-gyp
# compiles it, which needs python3, make and a C++ compiler.
RUN apt-get update \
  && apt-get install -y --no-install-recommends python3 make g++ \
  && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Node's headers ship with the image (/usr/local/include/node): node-gyp need not download them
# (npm 11 warns that it does not know "nodedir"; node-gyp reads it). JOBS: compile in parallel.
ENV npm_config_nodedir=/usr/local \
    JOBS=max \
    npm_config_audit=false \
    npm_config_fund=false \
    npm_config_update_notifier=false

COPY package.json package-lock.json ./
RUN npm ci

COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
# Build, then drop dev dependencies; the runtime stage copies node_modules as it is (native addon
# included) instead of installing and compiling a second time.
RUN npm run build && npm prune --omit=dev

# --- runtime: production dependencies and dist/ only, non-root ---------------------------------------
FROM ${NODE_IMAGE} AS runtime

ARG VERSION=dev
ARG REVISION=unknown
# Where the source lives (CI passes the repository URL, e.g. Drone's DRONE_REPO_LINK).
ARG SOURCE=
ARG CREATED=
LABEL org.opencontainers.image.title="ses-email-service" \
      org.opencontainers.image.description="SMTP relay for Amazon SES: durable spool, recipient-weighted rate limiting, suppression list" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.created="${CREATED}"

ENV NODE_ENV=production \
    SPOOL_DIR=/var/spool/ses-relay/queue \
    OUTBOX_DIR=/var/spool/ses-relay/outbox \
    SMTP_PORT=1025 \
    METRICS_PORT=9464

WORKDIR /app
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist

# The spool (SQLite database and message bodies) and, in embedded mode, the outbox live in one volume
# owned by the unprivileged `node` user (uid 1000). Keep it on a persistent volume: mail acknowledged
# with 250 is only in there until it is delivered.
RUN mkdir -p /var/spool/ses-relay/queue /var/spool/ses-relay/outbox \
  && chown -R node:node /var/spool/ses-relay
VOLUME /var/spool/ses-relay

# The operator's tools as one command on PATH, compiled JavaScript with production dependencies only:
# `ses-relay queue ...` (the spool) and `ses-relay blocklist ...` (suppression list, API keys).
RUN chmod 0755 /app/dist/cli/ses-relay.js \
  && ln -s /app/dist/cli/ses-relay.js /usr/local/bin/ses-relay

USER node
# 1025: SMTP for applications; 9464: metrics and health; 2525: the autoresponder's MX-facing listener
# (AUTORESPONDER_PORT, only when AUTORESPONDER_CONFIG is set).
EXPOSE 1025 9464 2525

# No curl in the slim image: node itself asks /healthz on the metrics port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["node", "-e", "const p=process.env.METRICS_PORT||9464;require('http').get({host:'127.0.0.1',port:p,path:'/healthz',timeout:4000},r=>process.exit(r.statusCode===200?0:1)).on('error',()=>process.exit(1)).on('timeout',()=>process.exit(1))"]

# Exec form: node is PID 1 and receives SIGTERM itself; the relay stops accepting (421), finishes
# in-flight transactions and deliveries within SHUTDOWN_TIMEOUT (25 s) and exits 0. Give it a stop
# timeout longer than that (docker stop -t 30, Kubernetes terminationGracePeriodSeconds >= 30).
# The official image's ENTRYPOINT (docker-entrypoint.sh) would exec node too; clear it so node is
# PID 1 directly whatever the base.
STOPSIGNAL SIGTERM
ENTRYPOINT []
CMD ["node", "dist/main.js"]
