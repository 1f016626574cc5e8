# One image for every K2 service and one-shot; the command picks what runs:
#   python -m k2.services.ingest | k2.services.writer | k2.services.query   (the services)
#   python -m k2.core.kafka                                         (topic provisioning)
# Python dependencies are installed by uv exactly as pinned in requirements/runtime.txt (versions and hashes).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUST_IMAGE=rust:1.95-slim-bookworm

FROM ${RUST_IMAGE} AS rust

FROM ${PYTHON_IMAGE} AS build
ARG UV_VERSION=0.13.8
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /app
# The image's own Python, bytecode compiled at build time, files copied (not hard-linked) out of uv's cache.
ENV UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
# Dependencies first, in a layer of their own that only a change of the lock rebuilds.
COPY requirements/runtime.txt requirements/runtime.txt
RUN uv venv /app/.venv && uv pip sync --python /app/.venv/bin/python requirements/runtime.txt
# The k2 distribution builds its compiled hot paths (native/, Rust via maturin): the toolchain from the rust image,
# its linker from Debian; neither reaches the final image, which holds the installed package only.
COPY --from=rust /usr/local/cargo /usr/local/cargo
COPY --from=rust /usr/local/rustup /usr/local/rustup
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /build/
COPY native /build/native
COPY k2 /build/k2
RUN CARGO_HOME=/usr/local/cargo RUSTUP_HOME=/usr/local/rustup PATH=/usr/local/cargo/bin:$PATH \
    uv pip install --python /app/.venv/bin/python --no-deps /build

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 k2 \
    && useradd --system --uid 10001 --gid k2 --home-dir /app --no-create-home k2
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY deploy/grpc_healthcheck.py deploy/grpc_healthcheck.py
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER k2
