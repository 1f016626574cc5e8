"""Recorded streams: the JSON-lines format, a recorder, and the source that replays a file.

Format: one combined-stream frame per line, exactly as a `/stream?streams=...` connection delivers it,
e.g. `{"stream":"btcusdt@trade","data":{"e":"trade","E":1735689600123,...}}`. Lines may come from this
recorder or any other capture of Binance combined streams. Timestamps may be milliseconds or
microseconds (a `timeUnit=MICROSECOND` capture); values above 10^14 are read as microseconds.

A replay starts when the first client subscribes to one of its streams and plays the file once.
Real-time pacing follows the recorded event times (`E`; events without one, such as bookTicker, go
out with the event before them), divided by the chosen speed. Event times are rewritten to the
moment of sending and `T` keeps its recorded distance to `E`, so latency measured downstream is the
replay's own. Ids, prices and quantities are sent as recorded (shifted only by injected id gaps).
"""

import asyncio
import json
import time
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .encoding import RECORDED, ascii_json

_MICROSECOND_THRESHOLD = 10**14


class RecordedStream:
    """Replay source with the same interface the server's pump uses for the simulator."""

    def __init__(self, path: str | Path) -> None:
        self._events: list[tuple[str, dict, int | None, float]] = []  # stream, data, T-E lag µs, due s
        first_time_us: int | None = None
        due = 0.0
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    frame = json.loads(line)
                    stream, data = frame["stream"], frame["data"]
                    if not isinstance(stream, str) or not isinstance(data, dict):
                        raise TypeError("'stream' must be a string and 'data' an object")
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{number}: not a combined-stream frame ({exc})") from None
                lag_us = None
                event_time = data.get("E")
                if isinstance(event_time, int):
                    scale = 1 if event_time >= _MICROSECOND_THRESHOLD else 1000
                    event_time_us = event_time * scale
                    if first_time_us is None:
                        first_time_us = event_time_us
                    due = max(due, (event_time_us - first_time_us) / 1e6)
                    if isinstance(data.get("T"), int):
                        lag_us = data["T"] * scale - event_time_us
                self._events.append((stream, data, lag_us, due))
        if not self._events:
            raise ValueError(f"{path}: no frames to replay")
        self._position = 0
        self._wanted: set[str] | frozenset[str] = frozenset()
        self._id_offsets: dict[str, int] = {}
        self._last_trade: dict[str, tuple[int, str, str]] = {}
        self._generated: dict[str, int] = {}
        self.symbols = sorted({data["s"] for _, data, _, _ in self._events if isinstance(data.get("s"), str)})

    @property
    def sim_time(self) -> float:
        """Recorded seconds (from the first event) at which the next event is due; inf once exhausted."""
        if self._position >= len(self._events):
            return float("inf")
        return self._events[self._position][3]

    @property
    def exhausted(self) -> bool:
        return self._position >= len(self._events)

    def advance_clock(self) -> None:
        """The next due time comes from the file itself."""

    def streams(self) -> list[str]:
        return sorted({stream for stream, _, _, _ in self._events})

    def set_wanted_streams(self, streams: set[str] | frozenset[str]) -> None:
        self._wanted = streams

    def generated_counts(self) -> dict[str, int]:
        return dict(self._generated)

    def emit_orders(self, min_events: int, trade_time_us: int, out: list[tuple]) -> int:
        """Append the next `min_events` recorded events (fewer at the end of the file); return the count.

        `trade_time_us` is unused: recorded times are rewritten relative to the send time at encoding.
        """
        events = self._events
        end = min(self._position + min_events, len(events))
        wanted = self._wanted
        for stream, data, lag_us, _ in events[self._position : end]:
            self._generated[stream] = self._generated.get(stream, 0) + 1
            symbol = data.get("s")
            offset = self._id_offsets.get(symbol, 0) if isinstance(symbol, str) else 0
            if offset:
                data = dict(data)
                for key in ("t", "f", "l"):
                    if isinstance(data.get(key), int):
                        data[key] += offset
            if data.get("e") == "trade" and isinstance(symbol, str) and isinstance(data.get("t"), int):
                self._last_trade[symbol] = (data["t"], str(data.get("p")), str(data.get("q")))
            if stream in wanted:
                out.append((stream, RECORDED, data, lag_us))
        emitted = end - self._position
        self._position = end
        return emitted

    def take_trade(self, symbol: str) -> tuple[int, str, str]:
        symbol = self._known(symbol)
        if symbol not in self._last_trade:
            raise ValueError(f"no {symbol} trade has been replayed yet")
        last_id, price, qty = self._last_trade[symbol]
        self._id_offsets[symbol] = self._id_offsets.get(symbol, 0) + 1
        self._last_trade[symbol] = (last_id + 1, price, qty)
        return last_id + 1, price, qty

    def renumber_trades(self, symbol: str, next_id: int) -> None:
        raise ValueError("a recording's trade ids are replayed as recorded; renumbering needs the simulator")

    def _known(self, symbol: str) -> str:
        symbol = symbol.upper()
        if symbol not in self.symbols:
            raise ValueError(f"symbol {symbol!r} is not in the recording ({', '.join(self.symbols)})")
        return symbol


async def record_stream(
    url: str, path: str | Path, *, max_frames: int | None = None, max_seconds: float | None = None
) -> int:
    """Append the frames of a combined-stream URL (`.../stream?streams=...`) to a JSON-lines file.

    Stops after `max_frames` frames or `max_seconds` seconds (at least one must be given); returns the
    number of frames written.
    """
    if max_frames is None and max_seconds is None:
        raise ValueError("give max_frames or max_seconds so the recording ends")
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    written = 0
    out = await asyncio.to_thread(open, path, "a", encoding="utf-8")
    websocket = await connect(url, compression=None)
    try:
        with out:
            while max_frames is None or written < max_frames:
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    break
                try:
                    async with asyncio.timeout(timeout):
                        message = await websocket.recv()
                except TimeoutError:
                    break
                text = message if isinstance(message, str) else message.decode()
                frame = json.loads(text)
                if not (isinstance(frame, dict) and "stream" in frame and "data" in frame):
                    raise ValueError(f"{url} does not deliver combined-stream frames: {text[:200]}")
                out.write(ascii_json(frame) + "\n")
                written += 1
    finally:
        await _close_draining(websocket)
    return written


async def _close_draining(websocket: ClientConnection) -> None:
    """Close while still reading: the server's close frame queues behind market data in flight."""
    closing = asyncio.create_task(websocket.close())
    try:
        while True:
            await websocket.recv()
    except ConnectionClosed:
        pass
    await closing
