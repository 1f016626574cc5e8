"""Binance JSON payloads and pre-framed WebSocket text frames, built in batches.

Events are plain tuples whose first two items are the stream name and the kind. A batch is encoded
once per client variant (raw or combined wrapper, milliseconds or microseconds) and turned into one
bytes object of complete, unmasked, uncompressed RFC 6455 text frames, so the send path costs one
transport write per batch instead of a protocol round per event. Everything is built as a `str`
whose characters are all below U+0100 (JSON here is ASCII: `json.dumps` escapes anything else), so a
single latin-1 encode produces the exact bytes.
"""

import json
from typing import Any

# Event tuples (times in µs; maker is the JSON literal "true"/"false"):
TRADE = 0  # (stream, TRADE, symbol, trade id, price, qty, trade time, maker)
AGG_TRADE = 1  # (stream, AGG_TRADE, symbol, aggregate id, price, qty, first id, last id, trade time, maker)
BOOK_TICKER = 2  # (stream, BOOK_TICKER, symbol, update id, bid, bid qty, ask, ask qty)
RECORDED = 3  # (stream, RECORDED, data dict, trade time minus event time or None)

SERVER_SHUTDOWN_STREAM = "!serverShutdown"

_TEXT_FIN = 0x81
_SHORT_HEADERS = [chr(_TEXT_FIN) + chr(n) for n in range(126)] + [
    chr(_TEXT_FIN) + chr(126) + chr(n >> 8) + chr(n & 0xFF) for n in range(126, 4096)
]


def frame_header(length: int) -> str:
    if length < 4096:
        return _SHORT_HEADERS[length]
    if length < 0x10000:
        return chr(_TEXT_FIN) + chr(126) + chr(length >> 8) + chr(length & 0xFF)
    return chr(_TEXT_FIN) + chr(127) + "".join(chr((length >> shift) & 0xFF) for shift in range(56, -1, -8))


def frame(payload: str) -> str:
    """One text frame for an ASCII payload, as latin-1 characters."""
    return frame_header(len(payload)) + payload


def ascii_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def wrap_combined(stream: str, payload: str) -> str:
    return '{"stream":"' + stream + '","data":' + payload + "}"


def server_shutdown_payload(event_time_us: int, micro: bool, combined: bool) -> str:
    event_time = event_time_us if micro else event_time_us // 1000
    payload = '{"e":"serverShutdown","E":' + str(event_time) + "}"
    return wrap_combined(SERVER_SHUTDOWN_STREAM, payload) if combined else payload


def _recorded_payload(event: tuple, event_time_us: int, micro: bool) -> str:
    _, _, data, trade_lag_us = event
    if "E" not in data:
        return ascii_json(data)
    retimed = dict(data)
    scale = 1 if micro else 1000
    retimed["E"] = event_time_us // scale
    if trade_lag_us is not None:
        retimed["T"] = (event_time_us + trade_lag_us) // scale
    return ascii_json(retimed)


def encode_batch(
    batch: list[tuple], wanted: set[str] | frozenset[str], combined: bool, micro: bool, event_time_us: int
) -> list[str | None]:
    """Framed text per event of the batch (None where the stream is not wanted)."""
    if micro:
        event_time = event_time_us
        divisor = 1
    else:
        event_time = event_time_us // 1000
        divisor = 1000
    headers = _SHORT_HEADERS
    out: list[str | None] = []
    append = out.append
    for event in batch:
        stream = event[0]
        if stream not in wanted:
            append(None)
            continue
        kind = event[1]
        if kind == TRADE:
            payload = (
                f'{{"e":"trade","E":{event_time},"s":"{event[2]}","t":{event[3]},"p":"{event[4]}",'
                f'"q":"{event[5]}","T":{event[6] // divisor},"m":{event[7]},"M":true}}'
            )
        elif kind == BOOK_TICKER:
            payload = (
                f'{{"u":{event[3]},"s":"{event[2]}","b":"{event[4]}","B":"{event[5]}",'
                f'"a":"{event[6]}","A":"{event[7]}"}}'
            )
        elif kind == AGG_TRADE:
            payload = (
                f'{{"e":"aggTrade","E":{event_time},"s":"{event[2]}","a":{event[3]},"p":"{event[4]}",'
                f'"q":"{event[5]}","f":{event[6]},"l":{event[7]},"T":{event[8] // divisor},'
                f'"m":{event[9]},"M":true}}'
            )
        else:
            payload = _recorded_payload(event, event_time_us, micro)
        if combined:
            payload = '{"stream":"' + stream + '","data":' + payload + "}"
        length = len(payload)
        append((headers[length] if length < 4096 else frame_header(length)) + payload)
    return out
