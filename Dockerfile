# syntax=docker/dockerfile:1
# Two images from one build: `wgnet-operator` and `wgnet-link` (make images).
# Both run on distroless/cc: glibc and libgcc, no shell, no package manager. The link adds
# only libnftnl and libmnl, which it links; no iproute2, nft or wireguard-tools: it drives
# netlink and WireGuard (boringtun) itself.

FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnftnl-dev libmnl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The same target `make release` runs outside containers.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    make release \
 && mkdir -p /out/bin /out/lib \
 && cp target/release/wgnet-operator target/release/wgnet-link /out/bin/ \
 && multiarch="$(gcc -print-multiarch)" \
 && mkdir -p "/out/lib/usr/lib/${multiarch}" \
 && cp -a /usr/lib/${multiarch}/libnftnl.so.11* /usr/lib/${multiarch}/libmnl.so.0* \
       "/out/lib/usr/lib/${multiarch}/"

# The operator: non-root, read-only root filesystem friendly (it writes nothing).
FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/bin/wgnet-operator /usr/local/bin/wgnet-operator
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/wgnet-operator"]

# The link: runs as root with NET_ADMIN only (the operator's Deployment drops everything
# else); it creates wg0 on /dev/net/tun and programs nftables and routes.
FROM gcr.io/distroless/cc-debian12 AS link
COPY --from=build /out/lib/ /
COPY --from=build /out/bin/wgnet-link /usr/local/bin/wgnet-link
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/wgnet-link"]
