# The two commands a newcomer needs: `make demo` and `make test`. Everything else supports them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help venv binaries tools lint test unit e2e demo bench clean

help:
	@echo "make demo   - local control plane + operator + sample profile, until Ctrl-C"
	@echo "make test   - lint, type-check, unit and end-to-end tests (builds the control plane once)"
	@echo "make bench  - scale benchmark (slow; writes bench/results/)"

# dev/ (local control plane, demo) is development tooling: on the venv's path, not in the wheel.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	echo "$(CURDIR)/dev" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/dpo-dev.pth"
	touch $(STAMP)

venv: $(STAMP)

# Builds etcd, kube-apiserver, kubectl, kube-router and calico-felix (the packet tests' two
# dataplanes; Felix with Calico v3.31.0's CRDs) and helm (the chart tests) from Go modules into
# ~/.cache (once; seconds after), and fetches the Calico, network-policy-api and policy-report
# CRDs the same way.
binaries: venv
	$(BIN)/python -c "from dpo_dev.cluster import ensure_binaries, ensure_helm, calico_crd_files, network_policy_api_crd_file, report_crd_files; ensure_binaries(); calico_crd_files(); network_policy_api_crd_file(); report_crd_files(); ensure_helm()"
	$(BIN)/python -c "from dpo_dev.kube_router import ensure_kube_router; ensure_kube_router()"
	$(BIN)/python -c "from dpo_dev.felix import crd_files, ensure_felix; ensure_felix(); crd_files()"

lint: venv
	$(BIN)/ruff check operator dev tests bench
	$(BIN)/ruff format --check operator dev tests bench
	$(BIN)/mypy

# prometheus and promtool for the monitoring tests; iptables, ipset, iproute2 and conntrack (Felix
# flushes a removed pod's flows with it) for the packet tests' dataplanes: Debian's packages (CI
# runs as root on Debian).
tools:
	command -v prometheus >/dev/null && command -v promtool >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus)
	command -v iptables >/dev/null && command -v ipset >/dev/null && command -v ip >/dev/null && command -v conntrack >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables ipset iproute2 conntrack)

test: lint binaries tools
	$(BIN)/pytest -q -p no:cacheprovider

unit: venv
	$(BIN)/pytest -q -p no:cacheprovider -m "not e2e and not slow"

demo: binaries
	$(BIN)/python -m dpo_dev.demo

# BENCH_ARGS="--sizes 1000" for a shorter run; --profile adds a py-spy flame graph;
# --peer kyverno measures Kyverno beside us (built from the Go module proxy once, ~13 min cold).
# The client-go floor (bench/floor, a Go module) is built into the binary cache on first use,
# keyed by its source hash; `make test`'s smoke run uses it only if already built.
bench: binaries
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .dpo-cluster .mypy_cache .ruff_cache .pytest_cache
