# 0k-Sync relay (docs/operations.md, "Container").
#
#   docker build -t zerok-relay .
#   docker run -d --name zerok-relay -p 8080:8080 -v zerok-data:/data \
#       --ulimit nofile=65536:65536 --stop-timeout 15 zerok-relay
#
# The database (relay.db, relay.db-wal, relay.db-shm) and the relay's key (relay.key) live
# in the volume /data. Options come from SYNC_RELAY_* variables (-e), from flags after the
# image name (zerok-relay relay --max-blob-size 4MiB), or from a relay.toml named by
# SYNC_RELAY_CONFIG; the two variables set below win over the file.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package needs; every dependency has a wheel, so no compiler is required.
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src/ ./src/
RUN pip install --no-cache-dir . \
    && cd / \
    && rm -rf /build

RUN groupadd --system --gid 10001 zerok \
    && useradd --system --uid 10001 --gid zerok --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin zerok \
    && mkdir -p /data \
    && chown zerok:zerok /data \
    && chmod 0700 /data

ENV SYNC_RELAY_DATABASE=/data/relay.db \
    SYNC_RELAY_BIND=0.0.0.0:8080

VOLUME ["/data"]
WORKDIR /data
USER zerok:zerok
EXPOSE 8080

# Slim images have no curl: ask /health with the standard library. The port is read from
# SYNC_RELAY_BIND, so change the port with that variable rather than with --bind.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('SYNC_RELAY_BIND', '0.0.0.0:8080').rsplit(':', 1)[1]; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=3).status == 200 else 1)"]

# SIGTERM starts the graceful shutdown: clients get ERROR 3001, in-flight commits finish,
# the process exits 0. It can take up to about 10 s: run with --stop-timeout 15.
STOPSIGNAL SIGTERM
ENTRYPOINT ["zerok"]
CMD ["relay"]
