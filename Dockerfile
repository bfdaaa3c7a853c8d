# syntax=docker/dockerfile:1.7
#
# majordomo container image.
#
#   docker build -t majordomo .
#   docker run --rm -p 7680:7680 -p 9091:9091 -v majordomo-data:/var/lib/majordomo majordomo
#
# Two stages: a Rust builder (cmake: Pingora builds zlib-ng) and a small
# Debian runtime that runs the binary as an unprivileged user. The builder runs
# exactly the release build that scripts/validate-deploy.sh runs on the host.
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

############################################################ builder
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder

# cmake + make: zlib-ng (through flate2/Pingora). The image already has gcc and libc6-dev.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake make \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# The whole (filtered, see .dockerignore) tree: Cargo.toml names benches and
# other targets whose files must exist for cargo to read the manifest, so the
# usual "copy Cargo.toml, build a dummy crate" trick is brittle here. Instead,
# the crate registry and target directory are BuildKit cache mounts: a source
# change recompiles majordomo only, not its ~300 dependencies.
# scripts/release-rustflags.sh: the committed profile (pgo/), a profile-guided
# build; a plain one if this image's rustc is not the one that made it.
COPY . .
RUN --mount=type=cache,id=majordomo-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=majordomo-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=majordomo-target,target=/src/target,sharing=locked \
    RUSTFLAGS="$(scripts/release-rustflags.sh)" cargo build --release --locked --bin majordomo \
 && install -D -m 0755 target/release/majordomo /out/majordomo

############################################################ runtime
# debian-slim rather than distroless/cc: the HEALTHCHECK needs something that
# can send an HTTP request. debian-slim already has bash (its /dev/tcp is all
# the check needs, see deploy/docker/healthcheck.sh), so no curl and none of
# its ~15 libraries (libcurl, nghttp2, ldap, kerberos, ssh…) are added;
# distroless has no shell at all and majordomo has no HTTP-client subcommand.
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates: upstreams (OpenAI, Anthropic, Gemini, S3, the price list) are https.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 majordomo \
 && useradd --system --uid 10001 --gid majordomo --no-create-home \
      --home-dir /var/lib/majordomo --shell /usr/sbin/nologin majordomo \
 && install -d -o majordomo -g majordomo -m 0750 /var/lib/majordomo /var/lib/majordomo/spool \
 && install -d -m 0755 /etc/majordomo

COPY --from=builder /out/majordomo /usr/local/bin/majordomo
COPY --chmod=0755 deploy/docker/healthcheck.sh /usr/local/bin/majordomo-healthcheck

# State lives in one volume: the SQLite database (the default store) and the
# spool, where every accepted request-log record is written before it is
# queued for the database. Keep it on persistent storage: records that have
# not reached the database yet live there and are replayed at the next start.
# Environment wins over majordomo.yaml, so these two keys are set here and
# only here; a mounted /etc/majordomo/majordomo.yaml configures the rest.
ENV MAJORDOMO_STORAGE_SQLITE_PATH=/var/lib/majordomo/majordomo.db \
    MAJORDOMO_SINK_SPOOL_DIR=/var/lib/majordomo/spool
VOLUME ["/var/lib/majordomo"]
WORKDIR /var/lib/majordomo

USER 10001:10001
# 7680: the gateway (HTTP, /health, /readyz). 9091: Prometheus /metrics.
EXPOSE 7680 9091

# Liveness: GET /health → 200. (/readyz also pings the database; compose and
# Kubernetes use it for readiness.)
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/majordomo-healthcheck", "/health"]

# SIGTERM (docker stop) = graceful: stop accepting, finish open requests and
# streams for server.grace_period_secs (60 s), then exit. Give `docker stop`
# more than that: docker stop -t 90 (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/majordomo"]
CMD ["serve"]
