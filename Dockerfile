# Herald in a container: a static-ish release build, run as a non-root user
# with its data on a volume. (Built and run where a registry is reachable;
# this repository's CI machine has none, so CI does not build it.)
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p herald-realtime

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/herald herald \
 && mkdir -p /var/lib/herald /etc/herald \
 && chown herald:herald /var/lib/herald && chmod 0700 /var/lib/herald
COPY --from=build /src/target/release/herald /usr/local/bin/herald
USER herald
VOLUME ["/var/lib/herald"]
EXPOSE 8080
ENV HERALD_LISTEN=0.0.0.0:8080 \
    HERALD_ENGINE_PATH=/var/lib/herald
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/ready || exit 1
# Mount a config at /etc/herald/herald.toml, or set HERALD_AUTH_HMAC_SECRET
# and HERALD_AUTH_API_KEYS: a non-loopback listen refuses to start without them.
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["serve", "--log-format", "json"]
