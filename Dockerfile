# Builder: the release binary. (The optional HiGHS solver feature needs cmake and
# libclang; the plan issue adds them here when it makes HiGHS selectable.)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY models ./models
# Explicit [[test]] and [[bench]] targets must exist for cargo to read the manifest.
COPY tests ./tests
COPY benches ./benches
RUN cargo build --release --locked && strip target/release/ped

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/ped --create-home ped \
 && apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ped /usr/local/bin/ped
COPY site-configs /etc/ped
USER ped
WORKDIR /var/lib/ped
VOLUME ["/var/lib/ped"]
ENV PED__SITE__OUTPUT_DIR=/var/lib/ped
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
  CMD curl -fsS http://127.0.0.1:9464/health || exit 1
ENTRYPOINT ["ped"]
CMD ["run", "--site", "/etc/ped/fontaine-douche.toml"]
