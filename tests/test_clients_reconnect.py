"""Live subscribers across a SIGKILL and restart of the query service (a real process): the SDK's subscription and
`k2 subscribe` keep reconnecting however long the service is away (far past their retry budget for other calls),
resume by token, report each reconnect, and see every trade exactly once and in order."""

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import ROOT
from service_processes import ServiceProcess, platform_env
from test_query_harness import T0, Market, trades

from k2.clients import ClientSettings, K2Client, Reconnect, Trade
from k2.core.config import IcebergSettings, KafkaSettings
from k2.core.records import TRADE

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
PER_STEP = 100  # trades per symbol produced at each step
# Retry settings that give up on a unary call or a publish within about a second.
SHORT_BUDGET = {"retry_attempts": 2, "retry_initial_backoff_seconds": 0.05, "retry_max_backoff_seconds": 0.5}


@pytest.fixture
def query(
    kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings, tmp_path: Path
) -> Iterator[ServiceProcess]:
    service = ServiceProcess(
        "query",
        platform_env(kafka_settings, iceberg_settings) | {"K2_QUERY_HEARTBEAT_SECONDS": "0.5"},
        tmp_path / "query.log",
    )
    service.start()
    try:
        yield service
    finally:
        service.stop()


class Subscriber(threading.Thread):
    """An SDK subscriber from T0 (history, then Kafka, then live) until it has `expected` trades."""

    def __init__(self, query: ServiceProcess, expected: int):
        super().__init__(daemon=True)
        self.client = K2Client(
            ClientSettings(query_address=query.address, token_file=Path("/nonexistent"), **SHORT_BUDGET)
        )  # type: ignore[arg-type]
        self.expected = expected
        self.received: list[Trade] = []
        self.reconnects: list[Reconnect] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for batch in self.client.subscribe_trades(SYMBOLS, start=T0, on_reconnect=self.reconnects.append):
                self.received += batch.records
                if len(self.received) >= self.expected:
                    return
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error
        finally:
            self.client.close()


def wait_for(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def assert_exactly_once(got: Sequence[str | None], produced: Sequence[str], label: str) -> None:
    assert len(got) == len(set(got)), f"{label}: {len(got) - len(set(got))} duplicates"
    assert set(got) == set(produced), f"{label}: {len(set(produced) - set(got))} missing"


def test_subscribers_resume_across_a_kill_9_of_the_query_service(
    market: Market, query: ServiceProcess
) -> None:
    steps = 12
    total = steps * PER_STEP * len(SYMBOLS)

    def step(number: int) -> None:
        market.produce(
            TRADE,
            trades(
                SYMBOLS,
                PER_STEP,
                start=T0 + timedelta(seconds=number * PER_STEP),
                first_sequence=number * PER_STEP,
            ),
        )

    step(0)
    market.commit(TRADE)  # the first step is history (Iceberg), the rest only in Kafka
    query.wait_serving()
    subscriber = Subscriber(query, total)
    subscriber.start()
    cli = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "k2"),
            "subscribe",
            *SYMBOLS,
            "--from",
            T0.isoformat(),
            "--count",
            str(total),
            "-f",
            "json",
        ],
        env=query.env
        | {"K2_QUERY_ADDRESS": query.address, "K2_TOKEN": ""}
        | {f"K2_{name.upper()}": str(value) for name, value in SHORT_BUDGET.items()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for number in range(1, 5):
            step(number)
        wait_for(lambda: len(subscriber.received) >= 3 * PER_STEP * len(SYMBOLS))
        query.kill()
        for number in range(5, 8):  # produced while the service is away
            step(number)
        time.sleep(3)  # far past the retry budget of SHORT_BUDGET
        query.start()
        for number in range(8, steps):
            step(number)
        subscriber.join(180)
        stdout, stderr = cli.communicate(timeout=180)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert subscriber.error is None, subscriber.error
    produced = [p.record["message_id"] for p in market.produced[TRADE]]
    per_symbol = {
        s: [p.record["message_id"] for p in market.produced[TRADE] if p.record["symbol"] == s]
        for s in SYMBOLS
    }

    sdk = [t.message_id for t in subscriber.received]
    assert_exactly_once(sdk, produced, "SDK subscriber")
    for symbol, ids in per_symbol.items():
        assert [t.message_id for t in subscriber.received if t.symbol == symbol] == ids, (
            f"{symbol} out of order"
        )
    assert subscriber.reconnects, "the reconnect was not reported"
    assert (
        len(subscriber.reconnects) > SHORT_BUDGET["retry_attempts"]
    )  # it outlasted the budget of other calls
    assert subscriber.reconnects[0].attempt == 1 and subscriber.reconnects[0].error.code.name == "UNAVAILABLE"

    assert cli.returncode == 0, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert_exactly_once([line["message_id"] for line in lines], produced, "k2 subscribe")
    for symbol, ids in per_symbol.items():
        assert [line["message_id"] for line in lines if line["symbol"] == symbol] == ids, (
            f"{symbol} out of order"
        )
    assert (
        "UNAVAILABLE" in stderr and "reconnecting in" in stderr and "resuming after the last record" in stderr
    )
