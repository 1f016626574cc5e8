"""A Binance-like exchange-day at scale, for every benchmark of history at exchange scale.

One exchange-day (SCALEX, 2021-01-04) of 2,000 symbols whose activity follows Zipf's law: BIGUSDT prints
1,000,000 trades, the other 1,999 symbols share 4,200,000 by rank (weight 1/rank), so ranks ~50-500 are the
1k-20k-trade "small symbol" days and the tail has a few hundred trades each. Prices and quantities are exact
decimals (8 fractional digits, random walks in ticks); every value, message id included, follows from the seed.

- `trades_table(spec)`: the day as an Arrow table in the Iceberg schema (time order), made in seconds: the
  independent reference benchmarks compare against, and data for writing layouts directly.
- `build(spec)`: the real path. A Kafka broker, `python -m k2.services.ingest` and `python -m
  k2.services.writer` of this checkout; the day is published through PublishTrades in batches of 500 (8 batches
  outstanding), the writer commits it, and its Compact RPC compacts it. The catalog and warehouse are kept in a
  cache folder named by the spec and the table layout (K2_SCALE_CACHE, default ~/.cache/k2/scale), so a later
  run (`dataset(spec)`) opens the same table at once; catalog and metadata hold absolute paths, so the folder is
  used where it is and must be treated as read-only.

Run alone: `python bench/scale_dataset.py [--small] [--rebuild]` builds (or finds) the dataset and prints one JSON
object with its size and how long each step took."""

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.compute as pc
from _kafka import ROOT, free_port, kafka_bootstrap
from ingest_publish import ingest_server

from k2.core.arrow_records import arrow_schema
from k2.core.config import IcebergSettings, KafkaSettings
from k2.core.iceberg import LAYOUT_VERSION, load_catalog, table_identifier
from k2.core.kafka import provision_topics
from k2.ingest.v1 import ingest_pb2
from k2.marketdata.v1.marketdata_pb2 import AssetClass, Side, Trade
from k2.writer.v1 import writer_pb2, writer_pb2_grpc

TOKEN = "bench-ingest-token"  # ingest_publish.ingest_server's
BATCH_SIZE = 500
WINDOW = 8  # batches outstanding on the publishing stream
SCALE = 10**8  # prices and quantities: 8 fractional digits
DAY_US = 86_400_000_000
METHOD = "/k2.ingest.v1.IngestService/PublishTrades"
CACHE = Path(os.environ.get("K2_SCALE_CACHE", Path.home() / ".cache" / "k2" / "scale"))


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ScaleSpec:
    symbols: int = 2_000
    big_trades: int = 1_000_000  # the most active symbol's (BIGUSDT) trades
    total_trades: int = 5_200_000
    zipf_exponent: float = 1.0  # the others' weights: 1 / rank ** exponent, rank 2..symbols
    exchange: str = "SCALEX"
    day: date = date(2021, 1, 4)
    seed: int = 11

    @property
    def big_symbol(self) -> str:
        return "BIGUSDT"

    def symbol(self, rank: int) -> str:
        """The symbol of activity rank `rank` (1 = the most active)."""
        return self.big_symbol if rank == 1 else f"S{rank:04d}USDT"

    def counts(self) -> dict[str, int]:
        """Trades per symbol, most active first: BIGUSDT's, then the rest by Zipf weight (largest remainder)."""
        weights = [1.0 / rank**self.zipf_exponent for rank in range(2, self.symbols + 1)]
        rest = self.total_trades - self.big_trades
        shares = [w / sum(weights) * (rest - len(weights)) for w in weights]
        counts = [int(share) + 1 for share in shares]  # every symbol trades at least once
        by_remainder = sorted(range(len(shares)), key=lambda i: (-(shares[i] - int(shares[i])), i))
        for i in by_remainder[: rest - sum(counts)]:
            counts[i] += 1
        return {self.big_symbol: self.big_trades} | {self.symbol(i + 2): c for i, c in enumerate(counts)}

    def small_symbol(self, near: int = 5_000) -> str:
        """The symbol whose day has the count closest to `near` trades."""
        counts = self.counts()
        return min(counts, key=lambda s: (abs(counts[s] - near), s))

    @property
    def day_start_us(self) -> int:
        return int(datetime(self.day.year, self.day.month, self.day.day, tzinfo=UTC).timestamp()) * 1_000_000

    def key(self) -> str:
        """Names the dataset's cache folder: the spec and the table layout the writer writes."""
        text = json.dumps(asdict(self), default=str, sort_keys=True) + f"|layout {LAYOUT_VERSION}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def zipf_symbols(spec: ScaleSpec) -> tuple[list[str], list[int]]:
    """(symbols, cumulative weights) of the spec's activity, for random.choices(..., cum_weights=...)."""
    counts = spec.counts()
    return list(counts), list(itertools.accumulate(counts.values()))


SMALL = ScaleSpec(symbols=200, big_trades=100_000, total_trades=300_000)  # for trying things out quickly


def _decimal_strings(units: list[int]) -> pa.Array:
    """Exact decimal strings of `units` / 10**8 (units > 0)."""
    return pa.array([f"{u // SCALE}.{u % SCALE:08d}" for u in units], pa.string())


def _uuid4(bits: int) -> str:
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def trades_table(spec: ScaleSpec = ScaleSpec()) -> pa.Table:
    """The exchange-day in time order (ties by symbol), every column of the Iceberg schema; ingestion time =
    event time, platform_sequence unset. Deterministic: the same spec gives the same table."""
    rng = random.Random(spec.seed)
    counts = spec.counts()
    symbols: list[str] = []
    times: list[int] = []
    sequences: list[int] = []
    prices: list[int] = []
    start_us = spec.day_start_us
    for symbol, count in counts.items():
        symbols += [symbol] * count
        times += sorted(start_us + rng.randrange(DAY_US) for _ in range(count))
        sequences += range(1, count + 1)
        price = int(10 ** rng.uniform(1, 12))  # 10**-7 .. 10**4 in units of 10**-8
        tick = max(1, price // 10_000)
        for step in rng.choices((-tick, 0, tick), k=count):
            price = max(tick, price + step)
            prices.append(price)
    n = len(times)
    quantities = [rng.randrange(1, 10 * SCALE) for _ in range(n)]
    message_ids = [_uuid4(rng.getrandbits(128)) for _ in range(n)]
    schema = arrow_schema("trade")
    symbol = pa.array(symbols, pa.string())
    sequence = pa.array(sequences, pa.int64())
    timestamp = pa.array(times, pa.int64()).cast(pa.timestamp("us", "UTC"))
    exchange = pa.repeat(pa.scalar(spec.exchange), n)
    columns = {
        "message_id": pa.array(message_ids, pa.string()),
        "trade_id": pc.binary_join_element_wise(exchange, symbol, sequence.cast(pa.string()), "-"),
        "symbol": symbol,
        "exchange": exchange,
        "asset_class": pa.repeat(pa.scalar("CRYPTO"), n),
        "timestamp": timestamp,
        "price": _decimal_strings(prices),
        "quantity": _decimal_strings(quantities),
        "currency": pa.repeat(pa.scalar("USDT"), n),
        "side": pa.array(["BUY" if q % 2 else "SELL" for q in quantities], pa.string()),
        "trade_conditions": pa.array([[]] * n, schema.field("trade_conditions").type),
        "source_sequence": sequence,
        "ingestion_timestamp": timestamp,
        "platform_sequence": pa.nulls(n, pa.int64()),
        "vendor_data": pa.nulls(n, schema.field("vendor_data").type),
    }
    table = pa.table([columns[f.name].cast(f.type) for f in schema], schema=schema)
    return table.take(pc.sort_indices(table, [("timestamp", "ascending"), ("symbol", "ascending")]))


def _requests(table: pa.Table) -> Iterator[bytes]:
    """PublishTradesRequest messages of BATCH_SIZE trades each (serialised, batch_id left to the sender)."""
    sides = {"BUY": Side.SIDE_BUY, "SELL": Side.SIDE_SELL}
    for batch in table.to_batches(BATCH_SIZE):
        columns = {
            name: batch.column(name)
            for name in ("message_id", "trade_id", "symbol", "exchange", "source_sequence")
        }
        strings = {name: column.to_pylist() for name, column in columns.items()}
        times = batch.column("timestamp").cast(pa.int64()).to_pylist()
        prices = batch.column("price").cast(pa.string()).to_pylist()
        quantities = batch.column("quantity").cast(pa.string()).to_pylist()
        side = batch.column("side").to_pylist()
        trades = []
        for i in range(batch.num_rows):
            trade = Trade(
                message_id=strings["message_id"][i],
                trade_id=strings["trade_id"][i],
                symbol=strings["symbol"][i],
                exchange=strings["exchange"][i],
                asset_class=AssetClass.ASSET_CLASS_CRYPTO,
                price=prices[i],
                quantity=quantities[i],
                currency="USDT",
                side=sides[side[i]],
                source_sequence=strings["source_sequence"][i],
            )
            trade.timestamp.FromMicroseconds(times[i])
            trades.append(trade)
        yield ingest_pb2.PublishTradesRequest(trades=trades).SerializeToString()


async def publish(port: int, table: pa.Table) -> int:
    """Publishes the table through PublishTrades (WINDOW batches outstanding); returns the trades accepted."""
    credits = asyncio.Semaphore(WINDOW)
    run = uuid.uuid4().hex[:8]
    accepted = 0

    async def requests() -> AsyncIterator[bytes]:
        for n, body in enumerate(_requests(table)):
            await credits.acquire()
            yield ingest_pb2.PublishTradesRequest(batch_id=f"{run}-{n}").SerializeToString() + body

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            METHOD,
            request_serializer=lambda raw: raw,
            response_deserializer=ingest_pb2.PublishTradesResponse.FromString,
        )
        async for answer in call(requests(), metadata=(("authorization", f"Bearer {TOKEN}"),)):
            if answer.rejections:
                raise RuntimeError(f"trades rejected: {answer.rejections[:3]}")
            accepted += answer.accepted
            credits.release()
    return accepted


@contextmanager
def writer_process(
    bootstrap: str, topic_prefix: str, iceberg: IcebergSettings, **settings: str
) -> Iterator[int]:
    """`python -m k2.services.writer` on a free gRPC port (Compact allowed with TOKEN), until SIGTERM."""
    port = free_port()
    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "K2_KAFKA_TOPIC_PREFIX": topic_prefix,
        "K2_ICEBERG_CATALOG_URI": iceberg.catalog_uri,
        "K2_ICEBERG_WAREHOUSE": iceberg.warehouse,
        "K2_WRITER_PORT": str(port),
        "K2_WRITER_METRICS_PORT": "0",
        "K2_AUTH_WRITE_TOKENS": json.dumps([TOKEN]),
        "K2_WRITER_GROUP_ID": f"scale-{uuid.uuid4().hex[:8]}",
        "K2_WRITER_PROVISION_TOPICS": "false",
        "K2_LOG_LEVEL": "WARNING",
    }
    env |= {f"K2_WRITER_{name.upper()}": value for name, value in settings.items()}
    process = subprocess.Popen(
        [sys.executable, "-m", "k2.services.writer"], cwd=ROOT, env=env, stdout=sys.stderr
    )
    try:
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def committed_rows(iceberg: IcebergSettings) -> int:
    try:
        table = load_catalog(iceberg).load_table(table_identifier(iceberg, "trade"))
    except Exception:  # noqa: BLE001 - the writer has not created it yet
        return 0
    snapshot = table.current_snapshot()
    return (
        int(snapshot.summary.additional_properties.get("total-records", 0))
        if snapshot and snapshot.summary
        else 0
    )


def compact(port: int, table: str = "market_data.trades") -> writer_pb2.CompactResult:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = writer_pb2_grpc.WriterServiceStub(channel)
        for event in stub.Compact(
            writer_pb2.CompactRequest(table=table), metadata=(("authorization", f"Bearer {TOKEN}"),)
        ):
            if event.HasField("result"):
                return event.result
    raise RuntimeError("Compact ended without a result")


def settings_for(folder: Path) -> IcebergSettings:
    return IcebergSettings(
        catalog_uri=f"sqlite:///{folder}/catalog.db", warehouse=f"file://{folder}/warehouse"
    )


def build(spec: ScaleSpec, folder: Path) -> dict[str, float]:
    """Publishes the day through ingest into a writer committing to `folder`, then compacts; seconds per step."""
    seconds: dict[str, float] = {}
    began = time.monotonic()
    table = trades_table(spec)
    seconds["generate_s"] = time.monotonic() - began
    iceberg = settings_for(folder)
    with kafka_bootstrap() as bootstrap:
        kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"scale-{uuid.uuid4().hex[:8]}.")
        provision_topics(kafka)
        with (
            writer_process(
                bootstrap, kafka.topic_prefix, iceberg, compaction_interval_seconds="0"
            ) as writer_port,
            ingest_server(bootstrap, kafka.topic_prefix) as (ingest_port, _),
        ):
            started = time.monotonic()
            log(f"publishing {table.num_rows:,} trades through PublishTrades ...")
            accepted = asyncio.run(publish(ingest_port, table))
            assert accepted == table.num_rows, f"{accepted} of {table.num_rows} accepted"
            seconds["publish_s"] = time.monotonic() - started
            deadline = time.monotonic() + 1800
            while (rows := committed_rows(iceberg)) < table.num_rows:
                assert time.monotonic() < deadline, f"the writer committed {rows} of {table.num_rows}"
                time.sleep(0.5)
            assert rows == table.num_rows, f"the writer committed {rows} rows, {table.num_rows} published"
            seconds["published_to_committed_s"] = time.monotonic() - started
            compacting = time.monotonic()
            result = compact(writer_port)
            log(f"compacted: {result.files_before} files → {result.files_after}")
            seconds["compact_s"] = time.monotonic() - compacting
    seconds["total_s"] = time.monotonic() - began
    return seconds


def dataset(spec: ScaleSpec = ScaleSpec(), rebuild: bool = False) -> tuple[IcebergSettings, dict[str, float]]:
    """The spec's table in its cache folder, built first if missing; (its settings, seconds per build step, or
    {} when found)."""
    folder = CACHE / spec.key()
    done = folder / "done.json"
    if done.exists() and not rebuild:
        return settings_for(folder), {}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    seconds = build(spec, folder)
    done.write_text(json.dumps({"spec": asdict(spec), "seconds": seconds}, default=str))
    return settings_for(folder), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="200 symbols, 300k trades")
    parser.add_argument("--rebuild", action="store_true", help="build even if the cache has it")
    args = parser.parse_args()
    spec = SMALL if args.small else ScaleSpec()
    began = time.monotonic()
    iceberg, seconds = dataset(spec, rebuild=args.rebuild)
    opened = time.monotonic() - began
    regenerated = time.monotonic()
    reference = trades_table(spec)
    regenerate_s = time.monotonic() - regenerated
    table = load_catalog(iceberg).load_table(table_identifier(iceberg, "trade"))
    files = table.inspect.files()
    counts = spec.counts()
    print(
        json.dumps(
            {
                "spec": asdict(spec) | {"day": spec.day.isoformat()},
                "trades": reference.num_rows,
                "big_symbol_trades": counts[spec.big_symbol],
                "small_symbol": spec.small_symbol(),
                "small_symbol_trades": counts[spec.small_symbol()],
                "symbols_below_1000_trades": sum(1 for c in counts.values() if c < 1000),
                "data_files": len(files),
                "data_bytes": sum(files["file_size_in_bytes"].to_pylist()),
                "built": bool(seconds),
                "build_seconds": {k: round(v, 1) for k, v in seconds.items()},
                "cached_open_s": None if seconds else round(opened, 2),
                "regenerate_arrow_s": round(regenerate_s, 1),
                "cache_folder": str(CACHE / spec.key()),
            }
        )
    )


if __name__ == "__main__":
    main()
