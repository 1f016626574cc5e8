"""Codec encode/decode rate of trade_v2 records, against raw fastavro on the same records in the same run.

The figure that matters is the ratio (K2 codec / raw fastavro), interleaved runs, best of each."""

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import BytesIO

import fastavro

from k2.core import avro
from k2.core.records import Record

N = 50_000
ROUNDS = 5


def records() -> list[Record]:
    start = datetime(2026, 11, 25, 12, tzinfo=UTC)
    return [
        {
            "message_id": str(uuid.uuid4()),
            "trade_id": f"BINANCE-{4123456789 + i}",
            "symbol": "BTCUSDT",
            "exchange": "BINANCE",
            "asset_class": "CRYPTO",
            "timestamp": start + timedelta(microseconds=i * 137),
            "price": Decimal("97123.45") + Decimal(i % 500) / 100,
            "quantity": Decimal("0.00150000"),
            "currency": "USDT",
            "side": "SELL" if i % 2 else "BUY",
            "trade_conditions": [],
            "source_sequence": 4123456789 + i,
            "ingestion_timestamp": start + timedelta(microseconds=i * 137 + 900),
            "platform_sequence": None,
            "vendor_data": {"is_buyer_maker": "true" if i % 2 else "false"},
        }
        for i in range(N)
    ]


def rate(fn, items) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - started)


def main() -> None:
    data = records()
    parsed = fastavro.parse_schema(avro.CURRENT["trade"].schema)

    def raw_encode(record: Record) -> bytes:
        out = BytesIO()
        fastavro.schemaless_writer(out, parsed, record)
        return out.getvalue()

    def raw_decode(body: bytes) -> Record:
        return fastavro.schemaless_reader(BytesIO(body), parsed, None)  # type: ignore[return-value]

    encoded = [avro.encode("trade", r) for r in data]
    raw_encoded = [raw_encode(r) for r in data]
    best = {"k2_encode": 0.0, "raw_encode": 0.0, "k2_decode": 0.0, "raw_decode": 0.0}
    for _ in range(ROUNDS):
        best["raw_encode"] = max(best["raw_encode"], rate(raw_encode, data))
        best["k2_encode"] = max(best["k2_encode"], rate(lambda r: avro.encode("trade", r), data))
        best["raw_decode"] = max(best["raw_decode"], rate(raw_decode, raw_encoded))
        best["k2_decode"] = max(best["k2_decode"], rate(avro.decode, encoded))
    print(
        json.dumps(
            {
                "records": N,
                "rounds": ROUNDS,
                "encode_per_s": round(best["k2_encode"]),
                "raw_fastavro_encode_per_s": round(best["raw_encode"]),
                "encode_ratio": round(best["k2_encode"] / best["raw_encode"], 3),
                "decode_per_s": round(best["k2_decode"]),
                "raw_fastavro_decode_per_s": round(best["raw_decode"]),
                "decode_ratio": round(best["k2_decode"] / best["raw_decode"], 3),
                "bytes_per_trade": round(sum(map(len, encoded)) / N, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
