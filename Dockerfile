# ped in a container: `docker build -t ped .` (add `--build-arg PED_FEATURES=`
# to build without HiGHS, with only the pure-Rust clarabel solver).
# tests/deploy_files.rs checks what can be checked without a Docker engine:
# every COPY source exists, the volumes, the user, the health check's port.

# Builder: the release binary, with the optional HiGHS solver (a C++ library
# built by cmake through highs-sys; bindgen needs libclang).
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libclang-dev g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY models ./models
# Explicit [[test]] and [[bench]] targets must exist for cargo to read the manifest.
COPY tests ./tests
COPY benches ./benches
ARG PED_FEATURES=highs
RUN cargo build --release --locked --features "$PED_FEATURES" \
 && strip target/release/ped \
 && target/release/ped --version

# Runtime: Debian slim, the binary, curl for the health check, a non-root user.
# libstdc++6 for HiGHS (statically linked itself, but C++).
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/ped --create-home --shell /usr/sbin/nologin ped \
 && apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libstdc++6 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ped /usr/local/bin/ped
# A default site config; mount yours over /etc/ped.
COPY site-configs /etc/ped
# Keys, plans and the ledger live under /var/lib/ped: keep it on a named volume.
RUN mkdir -p /var/lib/ped && chown ped:ped /var/lib/ped
USER ped
WORKDIR /var/lib/ped
VOLUME ["/etc/ped", "/var/lib/ped"]
# 0.0.0.0: the container's loopback is unreachable from outside. Beyond loopback
# ped serves the status page, /status.json and participant series only with the
# token of http.token_file (mount one, mode 600, owner 10001, and set
# PED__HTTP__TOKEN_FILE); without it they are refused and ped warns at start.
ENV PED__SITE__OUTPUT_DIR=/var/lib/ped \
    PED__HTTP__LISTEN=0.0.0.0:9464
EXPOSE 9464
# Liveness only: /ready also needs devices and a plan, which a restart would not fix.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9464/health || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["ped", "--log-format", "json"]
CMD ["run", "--site", "/etc/ped/fontaine-douche.toml"]
