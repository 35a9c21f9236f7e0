# wireguard-gateway-operator: build, test and generate.
# Every target installs what it needs; run `make help` for the list.

CARGO ?= cargo
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

.PHONY: help deps deps-vm test-vm guest-image k8s-bins build release images demo sandbox e2e-kind fmt fmt-check lint test bench fuzz generate check-generated ci

OPERATOR_IMAGE ?= ghcr.io/wgnet-dev/wgnet-operator:0.1.0
LINK_IMAGE ?= ghcr.io/wgnet-dev/wgnet-link:0.1.0

# Show the targets.
help:
	@awk '/^# /{c=substr($$0,3)} /^[a-z0-9-]+:/{split($$0,t,":"); if(c!="") printf "  %-16s %s\n", t[1], c; c=""}' Makefile

# Install the system packages the build and tests need (only those missing).
deps:
	@./scripts/install-deps.sh
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust with rustup (see README)" >&2; exit 1; }

# Install also what the VM tier needs (qemu, debootstrap).
deps-vm:
	@./scripts/install-deps.sh --vm
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust with rustup (see README)" >&2; exit 1; }

# Build the Debian 12 guest image of the VM tier (cached in ~/.cache/wgnet/guest; needs root).
guest-image: deps-vm
	@./scripts/guest-image.sh >/dev/null

# K8S_VERSION=v1.Y.Z selects another release; a no-op once built.
# Build the Kubernetes control plane the tests run (from source, cached in ~/.cache/wgnet).
k8s-bins: deps
	@./scripts/k8s-bins.sh >/dev/null

# Build every crate.
build: deps
	$(CARGO) build --workspace --locked

# Release builds of the two shipped binaries (what the Dockerfile runs).
release:
	$(CARGO) build --release --locked -p wgnet-operator --bin wgnet-operator -p wgnet-link --bin wgnet-link

# Container images of the operator and the link (needs docker or podman).
images:
	@engine=$$(command -v docker || command -v podman || true); \
	if [ -z "$$engine" ]; then echo "make images: needs docker or podman; neither is installed" >&2; exit 1; fi; \
	$$engine build --target operator -t $(OPERATOR_IMAGE) . && \
	$$engine build --target link -t $(LINK_IMAGE) .

# It applies examples/demo/, fetches a page through the gateway, deletes it and exits.
# VM=qemu boots the gateway VM as a Debian 12 guest under qemu (demo and sandbox).
# The local sandbox (as root): a real control plane, emulated GCP, real operator, link, VM.
demo: k8s-bins $(if $(filter qemu,$(VM)),guest-image)
	$(CARGO) run --quiet --locked -p wgnet-tests --bin wgnet-sandbox -- $(if $(VM),--vm $(VM))

# As demo, but keeps running with a kubeconfig printed until Ctrl-C (exits 0 and cleans up).
sandbox: k8s-bins $(if $(filter qemu,$(VM)),guest-image)
	$(CARGO) run --quiet --locked -p wgnet-tests --bin wgnet-sandbox -- --keep $(if $(VM),--vm $(VM))

# Real cluster (kind), real GCP: see scripts/e2e-kind.sh for what it needs. Not part of test.
e2e-kind:
	./scripts/e2e-kind.sh

# Format the code.
fmt:
	$(CARGO) fmt --all

# Fail when the code is not formatted.
fmt-check:
	$(CARGO) fmt --all -- --check

# Clippy on every target, warnings denied.
lint: deps
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# Every test (unit, chart, emulators, real control plane, netns e2e), generated files, scripts.
test: k8s-bins
	$(CARGO) test --workspace --locked
	$(MAKE) --no-print-directory check-generated
	shellcheck scripts/*.sh

# The VM tier: the gateway VM as a Debian 12 guest with kernel WireGuard under qemu (root).
test-vm: k8s-bins guest-image
	$(CARGO) test --locked -p wgnet-tests --test vm_guest -- --ignored --test-threads=1

# Data-plane throughput and latency against boringtun-cli and wireguard-go in network
# namespaces, control-plane time to Ready, GCP calls and RSS against the GCP emulator's
# gcp-typical profile (needs root; not part of test).
# Benchmarks (figures for the issue notes).
bench: k8s-bins
	@command -v boringtun-cli >/dev/null || $(CARGO) install --locked boringtun-cli
	@command -v gotatun >/dev/null || $(CARGO) install --locked gotatun-cli@0.10.2
	$(CARGO) bench --locked -p wgnet-cloud --bench provision
	$(CARGO) bench --locked -p wgnet-tests --bench dataplane
	$(CARGO) bench --locked -p wgnet-tests --bench operator
	$(CARGO) build --locked --release -p wgnet-operator --bin wgnet-operator
	$(CARGO) bench --locked -p wgnet-tests --bench operator_scale

# FUZZ_SECONDS=N per target (default 600); FUZZ_TARGETS to pick some.
# Fuzz the parsers of tenant input and the link's packet offload code, which a peer's
# packets reach (nightly Rust; corpus in fuzz/corpus/). Not part of test.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= wgquick link_config forwards offload
fuzz:
	@rustup toolchain list | grep -q '^nightly' || { echo "make fuzz: needs the nightly toolchain (rustup toolchain install nightly)" >&2; exit 1; }
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  cargo +nightly fuzz run $$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 || exit 1; \
	done

# Regenerate crds/ from the API types.
generate: deps
	$(CARGO) run --quiet --locked -p wgnet-operator --bin crdgen -- crds charts/wireguard-gateway-operator/crds

# Fail when crds/ differs from what the API types render.
check-generated: deps
	$(CARGO) run --quiet --locked -p wgnet-operator --bin crdgen -- --check crds charts/wireguard-gateway-operator/crds

# What CI runs.
ci: fmt-check lint test test-vm
