# tessera worker image.
#
#   docker build -t tessera .
#   # software rendering (lavapipe), anywhere:
#   docker run --rm -v "$PWD/out:/out" tessera render -o /out/demo.y4m
#   # on an NVIDIA node (NVIDIA Container Toolkit; Vulkan needs the graphics capability):
#   docker run --rm --gpus all -e NVIDIA_DRIVER_CAPABILITIES=compute,graphics,utility \
#     -v "$PWD/out:/out" tessera render /specs/clip.json -o /out/clip.y4m
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tessera

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libvulkan1 mesa-vulkan-drivers ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# The NVIDIA container runtime mounts the driver; this ICD file points the Vulkan
# loader at it (lavapipe stays available as the fallback adapter).
RUN mkdir -p /etc/vulkan/icd.d \
 && printf '{"file_format_version":"1.0.0","ICD":{"library_path":"libGLX_nvidia.so.0","api_version":"1.3"}}\n' \
      > /etc/vulkan/icd.d/nvidia_icd.json
COPY --from=build /src/target/release/tessera /usr/local/bin/tessera
COPY examples /specs
ENV XDG_RUNTIME_DIR=/tmp
RUN useradd --system --uid 10001 tessera
USER tessera
ENTRYPOINT ["tessera"]
CMD ["doctor"]
