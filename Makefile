# K2: `make up` runs the platform on the embedded defaults (`make up TRACING=1` with a local Jaeger); `make test`
# runs the whole suite. Both install what they need (a project-local .venv from requirements/dev.txt; Kafka, buf,
# grpcurl, Jaeger into ~/.cache/k2).
SHELL := /bin/bash
PYTHON := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: venv lock proto check-proto lint up down status test chaos bench clean

venv: .venv/.synced
.venv/.synced: pyproject.toml requirements/dev.txt scripts/bootstrap.sh native/Cargo.toml \
              $(wildcard native/src/*.rs)
	./scripts/bootstrap.sh
	touch $@

# Re-pins requirements/{runtime,dev}.txt from pyproject.toml, keeping every version that still satisfies it
# (the files carry versions and hashes, no index address). Upgrade one package with UV_ARGS="-P name".
lock:
	./scripts/lock.sh $(UV_ARGS)

proto: venv
	$(PYTHON) scripts/gen_proto.py

# The contracts: generated code current, buf lint (STANDARD) and no breaking change against main.
check-proto: venv
	$(PYTHON) scripts/gen_proto.py --check
	buf=$$(./scripts/tools.sh buf) && $$buf lint && \
	  if git rev-parse --verify -q main >/dev/null; then $$buf breaking --against '.git#branch=main'; fi

lint: venv
	.venv/bin/ruff check k2 tests bench scripts
	.venv/bin/ruff format --check k2 tests bench scripts
	.venv/bin/mypy k2/clients k2/core k2/services bench scripts
	$(PYTHON) -m mypy.stubtest k2._native
	cd native && cargo fmt --check && cargo clippy --release --quiet -- -D warnings

# `make up TRACING=1` (or K2_TRACING=1) also runs a local Jaeger that the services export their traces to;
# `make up REGISTRY=1` (or K2_REGISTRY=1) the local schema registry, whose framing the services then write.
up: venv
	K2_TRACING="$(or $(TRACING),$(K2_TRACING))" K2_REGISTRY="$(or $(REGISTRY),$(K2_REGISTRY))" \
	  ./scripts/platform.sh up

down:
	./scripts/platform.sh down

status: venv
	./scripts/platform.sh status

test: venv check-proto lint
	cd native && cargo test --release --quiet
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# The chaos suite, several rounds of every fault (make test runs one); its results replace the results section
# of docs/reliability.md, failed or not. K2_CHAOS_SEED repeats a run's random choices.
CHAOS_ROUNDS ?= 3
CHAOS_SUMMARY := .run/chaos/summary.json
chaos: venv
	rm -f $(CHAOS_SUMMARY)
	K2_CHAOS_ROUNDS=$(CHAOS_ROUNDS) K2_CHAOS_SUMMARY=$(CHAOS_SUMMARY) $(PYTHON) -m pytest tests/test_chaos.py -m chaos \
	  -s $(PYTEST_ARGS); status=$$?; \
	  if [ -f $(CHAOS_SUMMARY) ]; then $(PYTHON) scripts/chaos_report.py $(CHAOS_SUMMARY) docs/reliability.md; fi; \
	  exit $$status

bench: venv
	./scripts/bench.sh

clean: down
	rm -rf .run
