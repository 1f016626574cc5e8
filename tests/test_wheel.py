"""The distribution works installed. `uv build` makes the wheel (the k2 package with its compiled module k2._native
and its Avro schemas), which is installed into fresh virtual environments outside the checkout, each pinned to
requirements/runtime.txt as the image is:

- `k2[services]`: each service starts with `python -m k2.services.<name>` and becomes SERVING;
- `k2` alone (the SDK and the CLI, none of the services' dependencies): `k2 --help` answers, and the SDK
  publishes trades to those services and reads them back exactly."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from test_grpcurl import TOKEN, platform_processes

UV = ROOT / "scripts" / "tools.sh"
SERVICE_ONLY_MODULES = (
    "fastavro",
    "pyiceberg",
    "confluent_kafka",
    "opentelemetry",
    "websockets",
    "prometheus_client",
)


def uv() -> str:
    return subprocess.run([UV, "uv"], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [uv(), "build", "--wheel", "--quiet", "--out-dir", out], cwd=ROOT, check=True, timeout=1200
    )
    [built] = out.glob("k2-*.whl")
    return built


def install(wheel: Path, venv: Path, extra: str = "") -> Path:
    """A fresh virtual environment with the wheel installed; its Python."""
    subprocess.run([uv(), "venv", "--quiet", "--python", sys.executable, venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            uv(),
            "pip",
            "install",
            "--quiet",
            "--python",
            python,
            f"{wheel}{extra}",
            "--constraint",
            ROOT / "requirements" / "runtime.txt",
        ],
        check=True,
        timeout=600,
    )
    return python


@pytest.fixture(scope="module")
def services_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install(wheel, tmp_path_factory.mktemp("services-venv"), "[services]")


@pytest.fixture(scope="module")
def sdk_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install(wheel, tmp_path_factory.mktemp("sdk-venv"))


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A working directory outside the checkout, so nothing can be imported from it."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    yield folder


def test_the_sdk_installs_without_the_services_dependencies(sdk_python: Path, outside: Path) -> None:
    script = (
        "import importlib.util, json; import k2.clients; "
        f"print(json.dumps([m for m in {SERVICE_ONLY_MODULES!r} if importlib.util.find_spec(m)]))"
    )
    present = subprocess.run(
        [sdk_python, "-c", script], cwd=outside, check=True, capture_output=True, text=True
    ).stdout
    assert json.loads(present) == []
    cli = subprocess.run(
        [sdk_python.parent / "k2", "--help"], cwd=outside, check=True, capture_output=True, text=True
    )
    assert "subscribe" in cli.stdout and "trades" in cli.stdout


SDK_ROUND_TRIP = """
import sys
from datetime import UTC, datetime
from decimal import Decimal
from k2.clients import K2Client, Trade

assert "k2" in sys.modules and "site-packages" in sys.modules["k2"].__file__, sys.modules["k2"].__file__
day = datetime(2021, 1, 4, tzinfo=UTC)
trades = [Trade(trade_id=f"WHEEL-{n}", symbol="WHL", exchange="XWHL", asset_class="CRYPTO",
                timestamp=day.replace(second=n), price=Decimal("0.000000000000000001") * (n + 1),
                quantity=Decimal("12345678901234567890.5"), currency="USDT", side="BUY") for n in range(50)]
with K2Client() as k2:
    result = k2.publish_trades(trades)
    assert (result.accepted, result.rejections) == (50, []), result
    k2.flush()
    rows = k2.query_trade_records("WHL", day, day.replace(hour=1))
print(len(rows), format(sum(row.price for row in rows), "f"), rows[-1].quantity)
"""


def test_installed_services_serve_and_the_installed_sdk_round_trips_trades(
    services_python: Path, sdk_python: Path, kafka_bootstrap: str, tmp_path: Path, outside: Path
) -> None:
    with platform_processes(kafka_bootstrap, tmp_path, python=services_python, cwd=outside) as platform:
        env = {key: value for key, value in os.environ.items() if not key.startswith("K2_")} | {
            "K2_TOKEN": TOKEN,
            **{
                f"K2_{name.upper()}_ADDRESS": platform.address(name) for name in ("ingest", "writer", "query")
            },
        }
        printed = subprocess.run(
            [sdk_python, "-c", SDK_ROUND_TRIP],
            check=False,
            cwd=outside,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert printed.returncode == 0, printed.stderr
    assert printed.stdout.split() == ["50", "0.000000000000001275", "12345678901234567890.5"]
