# TVM — one entry point. `make run` starts the service; `make test` runs every check.
# Both install what they need (Debian/Ubuntu packages via apt-get) on first use.

SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CACHE ?= $(or $(TVM_CACHE_DIR),$(HOME)/.cache/tvm)
LISTEN ?= 127.0.0.1:8080
TARGET := x86_64-unknown-linux-gnu
AGENT := target/$(TARGET)/release/tvm-agent

# Debian packages: QEMU, the kernel source and its build tools, the rootfs tools.
PACKAGES := qemu-system-x86 linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev \
            mmdebstrap erofs-utils xz-utils curl ca-certificates

.PHONY: run test bench soak fuzz deps sdk-deps sdk-test agent build image guest-image oci-deps oci-image lint unit check-leftovers clean

OCI_OUT ?= target/oci
OCI_FLAGS := $(if $(FIRECRACKER),--firecracker $(FIRECRACKER) --jailer $(JAILER))

# The front door: pyroshell in embedded mode (pyrovm in-process) on Linux. Each step is
# shown with its time as it goes, then a timing table once /readyz says it is warm.
run:
	@LISTEN=$(LISTEN) CACHE=$(CACHE) SUDO=$(SUDO) MAKE="$(MAKE)" scripts/run.sh

test: image lint sdk-deps
	TVM_REQUIRE_VM=1 TVM_REQUIRE_OCI=1 TVM_IMAGE_DIR=$(CACHE)/current cargo test --workspace --all-targets --no-fail-fast -- --nocapture
	$(MAKE) --no-print-directory sdk-test
	@echo "==> short soak (100 mixed executions; \`make soak\` runs 1000)"
	SOAK_N=100 PYROVM_BIN=target/debug/pyrovm TVM_IMAGE_DIR=$(CACHE)/current python3 scripts/soak.py
	$(MAKE) --no-print-directory check-leftovers

# The SDKs (Python, TypeScript), the MCP server and the E2B door (the official `e2b`
# Python SDK), each in a throwaway environment, against a real pyrovm (the release
# build) with real VMs.
sdk-test:
	PYROVM_BIN=$(CURDIR)/target/release/pyrovm TVM_IMAGE_DIR=$(CACHE)/current TVM_REQUIRE_VM=1 sdk/python/run-tests.sh
	PYROVM_BIN=$(CURDIR)/target/release/pyrovm TVM_IMAGE_DIR=$(CACHE)/current TVM_REQUIRE_VM=1 sdk/typescript/run-tests.sh
	PYROVM_BIN=$(CURDIR)/target/release/pyrovm TVM_BIN=$(CURDIR)/target/release/tvm TVM_IMAGE_DIR=$(CACHE)/current scripts/mcp-test.sh
	PYROVM_BIN=$(CURDIR)/target/release/pyrovm PYROSHELL_BIN=$(CURDIR)/target/release/pyroshell TVM_IMAGE_DIR=$(CACHE)/current scripts/e2b-test.sh

# Node and npm (TypeScript SDK) and Python's venv (Python SDK, MCP client) when missing.
sdk-deps:
	@command -v npm >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm; }
	@python3 -c 'import ensurepip' 2>/dev/null || { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv; }

# Fuzz the API parsers and the agent protocol decoder, FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 60
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

# ≥ 1,000 mixed executions (normal, timeout, OOM, crash, flood, invalid), then leak checks.
soak: guest-image build
	TVM_IMAGE_DIR=$(CACHE)/current python3 scripts/soak.py

# A benchmark, not a test: latency, throughput, overhead and memory against baselines.
bench: guest-image
	@command -v bwrap >/dev/null || $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap
	TVM_IMAGE_DIR=$(CACHE)/current python3 scripts/bench.py
	TVM_IMAGE_DIR=$(CACHE)/current python3 scripts/gateway-bench.py
	@missing=$$(for p in gcc g++ rustc golang-1.19-go openjdk-17-jdk-headless esbuild nodejs ruby php-cli perl lua5.4; do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); if [ -n "$$missing" ]; then echo "==> host toolchains for lang-bench:" $$missing; $(SUDO) apt-get update -q; for p in $$missing; do $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$p || echo "==> $$p not installed: lang-bench reports it as 'host: not installed'"; done; fi; echo "TVM_IMAGE_DIR=$(CACHE)/current python3 scripts/lang-bench.py"; TVM_IMAGE_DIR=$(CACHE)/current python3 scripts/lang-bench.py

deps:
	@missing=$$(for p in $(PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "==> installing: $$missing"; \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	else echo "==> system packages present"; fi

# The agent is PID 1 in an initramfs with no libc: link it statically.
agent:
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p tvm-agent --target $(TARGET)

build:
	cargo build --release -p pyrovm -p pyroshell -p pyrolima -p tvm-cli -p tvm-deploy

# Both images: the guest image, then pyrovm's OCI image that carries it (docs/deploy.md).
image: guest-image oci-image

# The guest image, cached outside the repo by recipe hash: only changed parts are rebuilt.
guest-image: deps agent build
	$(SUDO) env TVM_CACHE_DIR=$(CACHE) ./target/release/tvm image build --agent $(AGENT)

oci-deps:
	@$(MAKE) --no-print-directory deps PACKAGES="mmdebstrap umoci skopeo"

# pyrovm's OCI image without a Docker daemon (mmdebstrap, umoci, skopeo); FIRECRACKER=… JAILER=… add them.
oci-image: guest-image oci-deps
	$(SUDO) env TVM_CACHE_DIR=$(CACHE) ./target/release/tvm-oci --pyrovm target/release/pyrovm --image-dir $(CACHE)/current --out $(OCI_OUT) $(OCI_FLAGS)

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

unit:
	cargo test --workspace --lib --bins

# After the suite: no VMM started by a test may still run.
check-leftovers:
	@scripts/check-leftovers.sh

clean:
	cargo clean
