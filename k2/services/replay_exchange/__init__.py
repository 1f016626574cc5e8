"""Local exchange speaking Binance Spot's market-data WebSocket protocol, for tests, benchmarks and demos.

    async with ReplayExchange(port=0, rate=1000) as exchange:
        async with websockets.asyncio.client.connect(exchange.url + "/ws/btcusdt@trade") as ws: ...
        exchange.drop_connections()            # faults: see ReplayExchange

From another process: `python -m k2.services.replay_exchange --port 0 ...` (see ReplayExchangeProcess),
driven over HTTP on the same port: GET /stats, GET|POST /control/<fault>?....
"""

from .market import MarketSimulator
from .process import ReplayExchangeProcess, http_control, http_stats
from .replay import RecordedStream, record_stream
from .server import RATE_MAX, RATE_REALTIME, ExchangeConfig, ReplayExchange, parse_rate
from .symbols import SYMBOLS, SymbolSpec

__all__ = [
    "RATE_MAX",
    "RATE_REALTIME",
    "SYMBOLS",
    "ExchangeConfig",
    "MarketSimulator",
    "RecordedStream",
    "ReplayExchange",
    "ReplayExchangeProcess",
    "SymbolSpec",
    "http_control",
    "http_stats",
    "parse_rate",
    "record_stream",
]
