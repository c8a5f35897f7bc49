# syntax=docker/dockerfile:1
# tessera worker image: `tessera serve` by default, on 0.0.0.0:8080 (API) and
# 0.0.0.0:9090 (metrics), data in the /data volume, as user 10001.
#
#   docker build -t tessera .
#   # one worker on SQLite in a named volume (software rendering: lavapipe):
#   docker run -d -p 8080:8080 -p 9090:9090 -v tessera-data:/data -e TESSERA_ADMIN_KEY=change-me tessera
#   # on an NVIDIA node (NVIDIA Container Toolkit; Vulkan needs the graphics capability):
#   docker run -d --gpus all -e NVIDIA_DRIVER_CAPABILITIES=compute,graphics,utility \
#     -p 8080:8080 -p 9090:9090 -v tessera-data:/data -e TESSERA_ADMIN_KEY=change-me tessera
#   # any other command: which GPU it sees, or a one-off render
#   docker run --rm tessera doctor
#   docker run --rm -v "$PWD/out:/out" tessera render /specs/orbit.json -o /out/orbit.avi
# Kubernetes: deploy/kubernetes (README, "Deploy on Kubernetes").

# The toolchain of rust-toolchain.toml, so rustup has nothing to fetch.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crate downloads and the compiled dependencies between
# builds; the binary is copied out of the cached target directory in the same
# step, since a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tessera \
 && install -D -m 0755 target/release/tessera /out/tessera

FROM debian:bookworm-slim
# The Vulkan loader and Mesa's lavapipe (software Vulkan: the fallback adapter
# where no GPU is mounted). Not pinned to versions: Debian's security updates
# replace these packages and the old versions leave the mirror, so a pin would
# break every rebuild after the next update; the base image's tag fixes the
# release (bookworm) and a rebuild takes its fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libvulkan1 mesa-vulkan-drivers ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# The NVIDIA container runtime mounts the driver's libraries (with the
# graphics capability) but not always an ICD file; this one points the Vulkan
# loader at the driver. Where there is no NVIDIA driver the loader skips it
# and lavapipe remains.
RUN mkdir -p /etc/vulkan/icd.d \
 && printf '{"file_format_version":"1.0.0","ICD":{"library_path":"libGLX_nvidia.so.0","api_version":"1.3"}}\n' \
      > /etc/vulkan/icd.d/nvidia_icd.json
# A numeric user (10001) so Kubernetes' runAsNonRoot can verify it without
# reading /etc/passwd; the entry exists for tools that look the name up.
RUN groupadd --system --gid 10001 tessera \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tessera \
 && mkdir -p /data \
 && chown 10001:10001 /data
COPY --from=build /out/tessera /usr/local/bin/tessera
COPY examples /specs
# The listen addresses: reachable from outside the container (the binary's
# own default is loopback only). Data, the SQLite store (unless TESSERA_DB
# names PostgreSQL) and the pipeline cache go to /data. XDG_RUNTIME_DIR and
# XDG_CACHE_HOME point Mesa and the NVIDIA driver at /tmp, the one writable
# place besides /data when the root filesystem is read-only.
ENV TESSERA_LISTEN=0.0.0.0:8080 \
    TESSERA_METRICS_LISTEN=0.0.0.0:9090 \
    TESSERA_DATA=/data \
    XDG_RUNTIME_DIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache
VOLUME ["/data"]
EXPOSE 8080 9090
USER 10001:10001
# Ready, not just alive: 503 while the store is unreachable, after a lost GPU
# and while draining. It probes TESSERA_HEALTH_URL (default
# http://127.0.0.1:8080/readyz): set it too when changing TESSERA_LISTEN. The
# start period covers the first shader compilation.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["tessera", "health", "--timeout-s", "3"]
ENTRYPOINT ["tessera"]
CMD ["serve"]
