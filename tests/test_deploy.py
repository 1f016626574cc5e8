"""The deployment files (docker-compose.yml, .env, Dockerfile, deploy/) agree with each other and the code.

Docker does not run here, so the compose stack is checked as files: every service has an image or a
build, every ${VAR} is defined in .env, ports are published from .env, dependencies exist and are waited on
correctly, the K2 services run real modules, and their settings classes parse the environment compose gives.
Prometheus rules and Grafana panels may only name metrics the services really expose: those are read from the
services' own Prometheus registry (every module of k2/services/<name> imported, then the registry collected as a
scrape would). The health-check and certificate scripts run for real against a GrpcServer.
"""

import asyncio
import importlib
import json
import os
import pkgutil
import re
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from pydantic.aliases import AliasChoices
from pydantic_settings import BaseSettings, SettingsConfigDict

from k2.core.config import AuthSettings, IcebergSettings, KafkaSettings, ServerSettings
from k2.core.grpcserver import GrpcServer

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SERVICES = ("ingest", "writer", "query")
GRPC_PORTS = {"ingest": 50051, "writer": 50052, "query": 50053}
METRICS_PORTS = {"ingest": 9101, "writer": 9102, "query": 9103}
OVERRIDES = (DEPLOY / "compose.tls.yml", DEPLOY / "compose.mtls.yml")
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; "$$" is a "$" for the container.
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}")
METRIC_NAME = re.compile(r"\bk2_[a-z0-9_]+")
# Sample names a metric family of each type exposes, by suffix.
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}
DEPENDENCY_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
OTEL_VARIABLES = {
    "OTEL_SERVICE_NAME",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
}
# Read by the health-check script and by k2.core.telemetry.setup_logging, not by a settings class.
OTHER_K2_VARIABLES = {
    "K2_LOG_LEVEL",
    "K2_HEALTHCHECK_CA_FILE",
    "K2_HEALTHCHECK_CERT_FILE",
    "K2_HEALTHCHECK_KEY_FILE",
    "K2_HEALTHCHECK_SERVER_NAME",
}


# --- reading the files ------------------------------------------------------------------------------------


@cache
def env_file() -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate((ROOT / ".env").read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), f".env line {number} is not NAME=value"
        assert name not in values, f".env defines {name} twice"
        values[name] = value
    return values


def load_yaml(path: Path) -> Any:
    with path.open() as file:
        return yaml.safe_load(file)


@cache
def compose() -> dict[str, Any]:
    return load_yaml(ROOT / "docker-compose.yml")  # type: ignore[no-any-return]


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]  # type: ignore[no-any-return]


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def interpolated(text: str) -> list[str]:
    return INTERPOLATION.findall(text.replace("$$", ""))


def resolve(text: str, secrets: dict[str, str] | None = None) -> str:
    """The value compose gives a string, from .env and the given secrets."""
    values = env_file() | (secrets or {})
    return INTERPOLATION.sub(lambda m: values[m.group(1)], text.replace("$$", "\0")).replace("\0", "$")


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment is written as a mapping"
    return {name: str(value) for name, value in env.items()}


def uses_k2_image(service: dict[str, Any]) -> bool:
    return "build" in service


# --- what the code defines ---------------------------------------------------------------------------------


def modules_under(package: str) -> Iterator[str]:
    root = importlib.import_module(package)
    yield package
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if not info.name.endswith("__main__"):
            yield info.name


@cache
def exposed_metric_names() -> frozenset[str]:
    """Every k2_ sample name the services can expose: each module of k2/services/<name> is imported (registering
    its metrics and collectors in the process registry), then the registry is collected as a scrape would."""
    for service in SERVICES:
        for module in modules_under(f"k2.services.{service}"):
            importlib.import_module(module)
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("k2_"):
            names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type])
    return frozenset(names)


def settings_classes() -> list[type[BaseSettings]]:
    found: dict[str, type[BaseSettings]] = {}
    for package in ("k2.core", "k2.services", "k2.clients"):
        for module_name in modules_under(package):
            module = importlib.import_module(module_name)
            for value in vars(module).values():
                if (
                    isinstance(value, type)
                    and issubclass(value, BaseSettings)
                    and value is not ServerSettings
                    and value.__module__ == module_name
                ):
                    found[f"{module_name}.{value.__name__}"] = value
    return list(found.values())


@cache
def setting_variables() -> frozenset[str]:
    """The environment variable names every settings class reads (prefix + field name, or its aliases)."""
    names: set[str] = set()
    for cls in settings_classes():
        prefix = cls.model_config.get("env_prefix", "")
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, AliasChoices):
                names.update(str(choice) for choice in alias.choices)
            elif isinstance(alias, str):
                names.add(alias)
            else:
                names.add(f"{prefix}{field_name}".upper())
    return frozenset(names)


# --- compose ----------------------------------------------------------------------------------------------


def test_every_compose_service_has_an_image_or_a_build() -> None:
    assert set(SERVICES) <= set(services())
    for name, service in services().items():
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        assert "container_name" not in service, f"{name}: a fixed container_name prevents scaling"


def test_every_interpolated_variable_is_defined_in_env() -> None:
    env = env_file()
    for path in (ROOT / "docker-compose.yml", *OVERRIDES):
        for text in strings(load_yaml(path)):
            for name in interpolated(text):
                assert name in env, f"{path.name}: ${{{name}}} is not defined in .env"


def test_env_file_defines_nothing_unused() -> None:
    used = {
        name
        for path in (ROOT / "docker-compose.yml", *OVERRIDES)
        for text in strings(load_yaml(path))
        for name in interpolated(text)
    }
    assert set(env_file()) - used == {"COMPOSE_PROJECT_NAME"}


def test_no_secret_is_kept_in_env_and_compose_requires_each() -> None:
    env = env_file()
    secrets = (
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_USER",
        "MINIO_ROOT_PASSWORD",
        "K2_ICEBERG_S3_ACCESS_KEY_ID",
        "K2_ICEBERG_S3_SECRET_ACCESS_KEY",
        "K2_AUTH_WRITE_TOKENS",
        "GRAFANA_ADMIN_PASSWORD",
    )
    texts = list(strings(compose()))
    for name in secrets:
        assert env[name] == "", f".env must not hold a value for {name}"
        uses = [m for text in texts for m in re.findall(r"\$\{" + name + r"(:?\?)?[^}]*\}", text)]
        assert uses and all(use == ":?" for use in uses), f"every use of {name} must be ${{{name}:?...}}"


def test_published_ports_come_from_env_and_do_not_collide() -> None:
    env = env_file()
    host_ports: dict[str, str] = {}
    for name, service in services().items():
        for mapping in service.get("ports", []):
            assert isinstance(mapping, str), f"{name}: write ports as ADDRESS:HOST_PORT:CONTAINER_PORT"
            address, host_port, container_port = mapping.split(":")
            assert address == "${PUBLISH_ADDRESS}", f"{name}: {mapping} is not bound to PUBLISH_ADDRESS"
            variable = re.fullmatch(r"\$\{([A-Z0-9_]+)\}", host_port)
            assert variable and variable.group(1) in env, f"{name}: host port of {mapping} is not from .env"
            assert container_port.isdigit(), f"{name}: container port of {mapping} should be a fixed port"
            value = env[variable.group(1)]
            assert value.isdigit(), f"{variable.group(1)}={value} is not a port"
            assert value not in host_ports, f"host port {value} published by {host_ports.get(value)}, {name}"
            host_ports[value] = name
    assert env["PUBLISH_ADDRESS"] == "127.0.0.1", "the default publishes on this machine only"


def test_dependencies_exist_and_are_waited_on_by_their_kind() -> None:
    all_services = services()
    for name, service in all_services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on must give each dependency a condition"
        for target, spec in depends_on.items():
            assert target in all_services, f"{name} depends on {target}, which is not a service"
            condition = spec["condition"]
            assert condition in DEPENDENCY_CONDITIONS, f"{name} → {target}: unknown condition {condition}"
            one_shot = "restart" not in all_services[target]
            if condition == "service_healthy":
                assert "healthcheck" in all_services[target], f"{name} waits for {target}'s health check"
            if condition == "service_completed_successfully":
                assert one_shot, f"{name} waits for {target} to exit, but {target} restarts"
            if one_shot:
                assert condition == "service_completed_successfully", f"{name} must wait for {target} to end"


def test_k2_services_run_their_own_module_with_real_health_checks() -> None:
    for name in SERVICES:
        service = services()[name]
        env = environment(service)
        prefix = f"K2_{name.upper()}_"
        assert service["command"] == ["python", "-m", f"k2.services.{name}"]
        assert (ROOT / "k2" / "services" / name / "__main__.py").is_file(), (
            f"no k2/services/{name}/__main__.py"
        )
        assert env["OTEL_SERVICE_NAME"] == name
        assert env[f"{prefix}HOST"] == "0.0.0.0"
        assert env[f"{prefix}ALLOW_PLAINTEXT"] == "true", "plaintext inside the private compose network"
        assert int(env[f"{prefix}PORT"]) == GRPC_PORTS[name]
        assert int(env[f"{prefix}METRICS_PORT"]) == METRICS_PORTS[name]
        container_ports = [mapping.split(":")[-1] for mapping in service["ports"]]
        assert container_ports == [str(GRPC_PORTS[name]), str(METRICS_PORTS[name])]
        assert service["healthcheck"]["test"] == [
            "CMD",
            "python",
            "/app/deploy/grpc_healthcheck.py",
            str(GRPC_PORTS[name]),
        ]
        assert service["restart"] == "unless-stopped"
        dependencies = service["depends_on"]
        assert dependencies["kafka-topics"]["condition"] == "service_completed_successfully"
    assert services()["kafka-topics"]["command"] == ["python", "-m", "k2.core.kafka"]
    assert callable(importlib.import_module("k2.core.kafka").main)


def test_catalog_uri_driver_is_installed() -> None:
    # The URI's driver must be the one pyiceberg[sql-postgres] brings in, or the catalog fails at start.
    importlib.import_module("psycopg2")


def test_services_settings_parse_the_compose_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each service's real settings classes read the environment compose gives it (.env plus secrets of the
    documented forms), with and without the TLS overrides."""
    secrets = {
        "POSTGRES_PASSWORD": "0f1e2d",
        "K2_ICEBERG_S3_ACCESS_KEY_ID": "k2-services",
        "K2_ICEBERG_S3_SECRET_ACCESS_KEY": "5ec7e7",
        "K2_AUTH_WRITE_TOKENS": '["a1b2c3"]',
    }
    tls, mtls = (load_yaml(path)["services"] for path in OVERRIDES)
    for name in SERVICES:
        classes = [cls for cls in settings_classes() if cls.__module__.startswith(f"k2.services.{name}.")]
        classes += [KafkaSettings, IcebergSettings, AuthSettings]
        for layers in ([services()[name]], [services()[name], tls[name], mtls[name]]):
            for variable in list(os.environ):
                if variable.startswith(("K2_", "OTEL_")) or variable == "KAFKA_BOOTSTRAP_SERVERS":
                    monkeypatch.delenv(variable)
            for layer in layers:
                for variable, value in environment(layer).items():
                    monkeypatch.setenv(variable, resolve(value, secrets))
            parsed: dict[str, Any] = {cls.__name__: cls() for cls in classes}
            server = parsed[f"{name.capitalize()}Settings"]
            assert (server.host, server.port) == ("0.0.0.0", GRPC_PORTS[name])
            assert server.metrics_port == METRICS_PORTS[name]
            assert os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
            assert server.allow_plaintext == (len(layers) == 1)
            assert (server.tls_client_ca_file is not None) == (len(layers) == 3)
            assert parsed["KafkaSettings"].bootstrap_servers == "kafka:19092"
            assert [t.get_secret_value() for t in parsed["AuthSettings"].write_tokens] == ["a1b2c3"]
            if name == "ingest":
                binance = parsed["BinanceSettings"]
                assert binance.enabled
                assert binance.symbols == env_file()["K2_INGEST_BINANCE_SYMBOLS"].split(",")
                assert "K2_ICEBERG_CATALOG_URI" not in os.environ, "ingest has no business with Iceberg"
            else:
                iceberg = parsed["IcebergSettings"]
                assert iceberg.catalog_uri == "postgresql+psycopg2://k2:0f1e2d@postgres:5432/k2_catalog"
                assert iceberg.warehouse == f"s3://{env_file()['WAREHOUSE_BUCKET']}/"
                assert iceberg.s3_endpoint == "http://minio:9000"


def test_every_k2_variable_set_in_compose_is_a_real_setting() -> None:
    known = setting_variables() | OTEL_VARIABLES | OTHER_K2_VARIABLES
    for path in (ROOT / "docker-compose.yml", *OVERRIDES):
        for name, service in load_yaml(path)["services"].items():
            if path.name == "docker-compose.yml" and not uses_k2_image(service):
                continue
            for variable in environment(service):
                if variable.startswith(("K2_", "OTEL_")) or variable == "KAFKA_BOOTSTRAP_SERVERS":
                    assert variable in known, f"{path.name}: {name} sets {variable}, which nothing reads"


def test_tls_overrides_give_each_service_its_own_certificate() -> None:
    tls, mtls = (load_yaml(path)["services"] for path in OVERRIDES)
    for name in SERVICES:
        prefix = f"K2_{name.upper()}_"
        env = environment(tls[name])
        assert env[f"{prefix}ALLOW_PLAINTEXT"] == "false"
        mounted = {volume.split(":")[1] for volume in tls[name]["volumes"]}
        assert {env[f"{prefix}TLS_CERT_FILE"], env[f"{prefix}TLS_KEY_FILE"]} <= mounted
        assert env["K2_HEALTHCHECK_CA_FILE"] in mounted
        assert not any(volume.split(":")[0].endswith("ca.key") for volume in tls[name]["volumes"])
        assert env["K2_HEALTHCHECK_SERVER_NAME"] == name
        mtls_env = environment(mtls[name])
        mounted |= {volume.split(":")[1] for volume in mtls[name]["volumes"]}
        assert {
            mtls_env[f"{prefix}TLS_CLIENT_CA_FILE"],
            mtls_env["K2_HEALTHCHECK_CERT_FILE"],
            mtls_env["K2_HEALTHCHECK_KEY_FILE"],
        } <= mounted


def test_configuration_doc_lists_every_variable() -> None:
    lines = (ROOT / "docs" / "configuration.md").read_text().splitlines()
    first_cells = [line.split(" | ")[0] for line in lines if line.startswith("| `")]
    documented = {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
    for variable in sorted(setting_variables() | OTEL_VARIABLES | OTHER_K2_VARIABLES):
        assert variable in documented, f"{variable} is not documented in docs/configuration.md"


# --- Dockerfile -------------------------------------------------------------------------------------------


def copied_into_image() -> set[str]:
    sources = re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    return {path for source in sources for path in source.split()}


def test_dockerfile_builds_from_the_lock_on_python_3_11_slim() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", dockerfile, re.MULTILINE)
    assert env_file()["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert "uv pip sync --python /app/.venv/bin/python requirements/runtime.txt" in dockerfile
    tools = (ROOT / "scripts" / "tools.sh").read_text()
    tools_uv = re.search(r"^UV_VERSION=(\S+)", tools, re.MULTILINE)
    assert tools_uv and env_file()["UV_VERSION"] == tools_uv.group(1), "one uv for .venv and image"
    build_args = set(re.findall(r"^ARG (\w+)", dockerfile, re.MULTILINE))
    for name, service in services().items():
        if uses_k2_image(service):
            assert set(service["build"]["args"]) <= build_args, f"{name}: build args the Dockerfile lacks"
    for path in copied_into_image():
        assert (ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"


def test_dockerignore_lets_through_what_the_dockerfile_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert copied_into_image() <= allowed


# --- Prometheus -----------------------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    rules: list[dict[str, Any]] = []
    for rule_file in config["rule_files"]:
        for group in load_yaml(DEPLOY / "prometheus" / rule_file)["groups"]:
            assert group["name"] and group["rules"]
            rules += group["rules"]
    return rules


def test_prometheus_scrapes_each_service_on_its_metrics_port() -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {
        job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
        for job in config["scrape_configs"]
    }
    for name in SERVICES:
        assert jobs[name] == [f"{name}:{METRICS_PORTS[name]}"]
    volume = next(v for v in services()["prometheus"]["volumes"] if v.startswith("./deploy/prometheus:"))
    assert volume.split(":")[1] == "/etc/prometheus"


def test_alert_rules_are_complete_and_name_exposed_metrics() -> None:
    exposed = exposed_metric_names()
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        for metric in METRIC_NAME.findall(rule["expr"]):
            assert metric in exposed, f"alert {rule['alert']} uses {metric}, which no service exposes"
    expressions = "\n".join(rule["expr"] for rule in rules)
    # The conditions the operators asked to be paged for.
    for needed in (
        "up{",
        "k2_binance_connections",
        "k2_binance_gaps_total",
        "k2_writer_consumer_lag_messages",
        "k2_writer_visibility_delay_seconds_bucket",
        "k2_writer_freshness_seconds",
    ):
        assert needed in expressions, f"no alert uses {needed}"


def test_metric_name_check_can_fail() -> None:
    exposed = exposed_metric_names()
    assert "k2_writer_commits_total" in exposed and "k2_writer_commits" not in exposed
    assert "k2_writer_commit_duration_seconds_bucket" in exposed
    assert "k2_nonexistent_metric" not in exposed
    assert {name.split("_")[1] for name in exposed} >= {"ingest", "binance", "writer", "query"}


# --- Grafana --------------------------------------------------------------------------------------------

GRAFANA = DEPLOY / "grafana"


def dashboards() -> dict[str, dict[str, Any]]:
    paths = sorted((GRAFANA / "dashboards").glob("*.json"))
    return {path.name: json.loads(path.read_text()) for path in paths}


def datasources() -> list[dict[str, Any]]:
    provisioned = load_yaml(GRAFANA / "provisioning" / "datasources" / "datasources.yml")
    return provisioned["datasources"]  # type: ignore[no-any-return]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    prometheus = next(d for d in datasources() if d["type"] == "prometheus")
    assert prometheus["url"] == "http://prometheus:9090" and prometheus["isDefault"]
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "dashboards.yml")["providers"]
    mounts = dict(v.split(":")[:2] for v in services()["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert [p["options"]["path"] for p in providers] == [mounts["./deploy/grafana/dashboards"]]


def test_dashboards_cover_the_platform_and_name_exposed_metrics() -> None:
    exposed = exposed_metric_names()
    uids = {d["uid"] for d in datasources()}
    found = dashboards()
    assert len(found) >= 3
    assert len({d["uid"] for d in found.values()}) == len(found), "dashboard uids must be unique"
    used: set[str] = set()
    for file_name, dashboard in found.items():
        assert dashboard["title"] and dashboard["uid"] and dashboard["panels"], file_name
        panel_ids = [p["id"] for p in panels(dashboard)]
        assert len(panel_ids) == len(set(panel_ids)), f"{file_name}: panel ids must be unique"
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            where = f"{file_name}: panel {panel['id']} {panel['title']!r}"
            assert panel["title"] and panel["targets"], f"{where} has no title or query"
            assert panel["datasource"]["uid"] in uids, f"{where}: unknown data source"
            for target in panel["targets"]:
                metrics = METRIC_NAME.findall(target["expr"])
                assert metrics or "up{" in target["expr"], f"{where} queries no K2 metric"
                for metric in metrics:
                    assert metric in exposed, f"{where} uses {metric}, which no service exposes"
                used.update(metrics)
    # Ingest rates and errors, feed health and gaps, Kafka lag, Iceberg freshness and commits, query
    # latencies, subscribers and drops.
    prefixes = (
        "k2_ingest_",
        "k2_binance_gaps",
        "k2_binance_connection",
        "k2_writer_consumer_lag",
        "k2_writer_freshness",
        "k2_writer_commits",
        "k2_query_",
    )
    for prefix in prefixes:
        assert any(name.startswith(prefix) for name in used), f"no dashboard panel shows {prefix}*"


# --- the scripts compose and operators run ----------------------------------------------------------------


class _ServerSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="K2_TEST_DEPLOY_UNUSED_", extra="ignore")


async def _healthcheck(port: int, env: dict[str, str] | None = None) -> tuple[int, str]:
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("K2_HEALTHCHECK_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DEPLOY / "grpc_healthcheck.py"),
        str(port),
        env=inherited | (env or {}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    return process.returncode or 0, output.decode()


async def test_healthcheck_reports_serving_not_serving_and_unreachable() -> None:
    auth = AuthSettings(write_tokens=[], read_tokens=[], token_file=None, require_read_token=True)
    settings = _ServerSettings(host="127.0.0.1", port=0, metrics_port=0, grace_seconds=0.5)
    server = GrpcServer("deploy-test", settings, auth)
    port = await server.start()
    try:
        assert await _healthcheck(port) == (0, "SERVING\n")
        await server.set_serving(False)
        code, output = await _healthcheck(port)
        assert code == 1 and "NOT_SERVING" in output
    finally:
        await server.stop()
    code, output = await _healthcheck(port)
    assert code == 1 and "UNAVAILABLE" in output


async def test_make_certs_output_serves_mtls_and_the_healthcheck_uses_it(tmp_path: Path) -> None:
    make_certs = await asyncio.create_subprocess_exec(
        DEPLOY / "make-certs.sh", tmp_path, "k2.example.internal", stderr=asyncio.subprocess.DEVNULL
    )
    assert await asyncio.wait_for(make_certs.wait(), timeout=60) == 0
    settings = _ServerSettings(
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        grace_seconds=0.5,
        tls_cert_file=tmp_path / "ingest.crt",
        tls_key_file=tmp_path / "ingest.key",
        tls_client_ca_file=tmp_path / "ca.crt",
    )
    auth = AuthSettings(write_tokens=[], read_tokens=[], token_file=None)
    server = GrpcServer("deploy-test", settings, auth)
    port = await server.start()
    tls_env = {"K2_HEALTHCHECK_CA_FILE": str(tmp_path / "ca.crt"), "K2_HEALTHCHECK_SERVER_NAME": "ingest"}
    client_env = {
        "K2_HEALTHCHECK_CERT_FILE": str(tmp_path / "client.crt"),
        "K2_HEALTHCHECK_KEY_FILE": str(tmp_path / "client.key"),
    }
    try:
        assert await _healthcheck(port, tls_env | client_env) == (0, "SERVING\n")
        code, output = await _healthcheck(port, tls_env)
        assert code == 1 and "UNAVAILABLE" in output, "mTLS must refuse a client without a certificate"
        code, _ = await _healthcheck(port)
        assert code == 1, "a TLS server must refuse plaintext"
        wrong_name = tls_env | client_env | {"K2_HEALTHCHECK_SERVER_NAME": "writer"}
        code, _ = await _healthcheck(port, wrong_name)
        assert code == 1, "the ingest certificate must not pass for writer"
    finally:
        await server.stop()
    for name in ("ca.crt", "client.crt", *(f"{s}.{ext}" for s in SERVICES for ext in ("crt", "key"))):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "ingest.key").stat().st_mode & 0o077 == 0, "a private key is its owner's only"


@pytest.mark.parametrize("path", [DEPLOY / "make-certs.sh"])
def test_scripts_are_executable(path: Path) -> None:
    assert path.stat().st_mode & 0o111


def test_pinned_requirements_hold_the_versions_pyproject_pins() -> None:
    """requirements/*.txt are generated by `make lock`; a pin changed in pyproject.toml without re-locking fails here."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {
        "runtime": project["project"]["dependencies"],
        "dev": project["project"]["dependencies"] + project["dependency-groups"]["dev"],
    }
    for name, requirements in declared.items():
        pinned = dict(
            re.findall(
                r"^([A-Za-z0-9_.-]+)==(\S+)",
                (ROOT / "requirements" / f"{name}.txt").read_text(),
                re.MULTILINE,
            )
        )
        pinned = {package.lower().replace("_", "-"): version for package, version in pinned.items()}
        for requirement in requirements:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(\S+)", requirement)
            if match:
                package = match.group(1).lower().replace("_", "-")
                assert pinned.get(package) == match.group(2), (
                    f"requirements/{name}.txt: {package} (run make lock)"
                )
