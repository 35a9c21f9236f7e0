# wireguard-gateway-operator: build, test and generate.
# Every target installs what it needs; run `make help` for the list.

CARGO ?= cargo
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

.PHONY: help deps build fmt fmt-check lint test bench generate check-generated ci

# Show the targets.
help:
	@awk '/^# /{c=substr($$0,3)} /^[a-z-]+:/{split($$0,t,":"); if(c!="") printf "  %-16s %s\n", t[1], c; c=""}' Makefile

# Install the system packages the build and tests need (only those missing).
deps:
	@./scripts/install-deps.sh
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust with rustup (see README)" >&2; exit 1; }

# Build every crate.
build: deps
	$(CARGO) build --workspace --locked

# Format the code.
fmt:
	$(CARGO) fmt --all

# Fail when the code is not formatted.
fmt-check:
	$(CARGO) fmt --all -- --check

# Clippy on every target, warnings denied.
lint: deps
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# Every test tier that exists so far, then the generated-files check.
test: deps
	$(CARGO) test --workspace --locked
	$(MAKE) --no-print-directory check-generated

# Benchmarks (not part of test): control-plane time to Ready and API calls per gateway
# against the GCP emulator's gcp-typical profile; data-plane throughput and latency in
# network namespaces against boringtun-cli and wireguard-go (needs root).
bench: deps
	@command -v boringtun-cli >/dev/null || $(CARGO) install --locked boringtun-cli
	$(CARGO) bench --locked -p wgnet-cloud --bench provision
	$(CARGO) bench --locked -p wgnet-tests --bench dataplane
	$(CARGO) bench --locked -p wgnet-tests --bench operator
	$(CARGO) build --locked --release -p wgnet-operator --bin wgnet-operator
	$(CARGO) bench --locked -p wgnet-tests --bench operator_scale

# Regenerate crds/ from the API types.
generate: deps
	$(CARGO) run --quiet --locked -p wgnet-operator --bin crdgen -- crds charts/wireguard-gateway-operator/crds

# Fail when crds/ differs from what the API types render.
check-generated: deps
	$(CARGO) run --quiet --locked -p wgnet-operator --bin crdgen -- --check crds charts/wireguard-gateway-operator/crds

# What CI runs.
ci: fmt-check lint test
