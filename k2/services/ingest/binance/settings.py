"""Settings of the Binance live feed (environment prefix K2_INGEST_BINANCE_)."""

import json
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from k2.core.config import is_loopback_host
from k2.core.records import FieldError, check_name

LIVE_ENDPOINTS = [
    "wss://stream.binance.com:9443",
    "wss://stream.binance.com:443",
    "wss://data-stream.binance.vision",
]
# Quote assets Binance Spot lists; the currency of a symbol is its longest matching suffix.
QUOTE_ASSETS = (
    "USDT",
    "USDC",
    "FDUSD",
    "TUSD",
    "BUSD",
    "USDP",
    "DAI",
    "AEUR",
    "EURI",
    "BTC",
    "ETH",
    "BNB",
    "XRP",
    "TRX",
    "DOGE",
    "DOT",
    "SOL",
    "EUR",
    "TRY",
    "BRL",
    "GBP",
    "AUD",
    "JPY",
    "RUB",
    "UAH",
    "ZAR",
    "PLN",
    "RON",
    "ARS",
    "MXN",
    "COP",
    "IDR",
    "CZK",
    "USD1",
)
MAX_CONNECTION_LIFETIME = 24 * 3600.0
# K2_INGEST_BINANCE_SYMBOLS=ALL: every symbol the exchange lists as TRADING (REST exchangeInfo), followed while running.
ALL_SYMBOLS = "ALL"
_SYMBOL = re.compile(r"^[A-Z0-9]{2,30}$")


def check_symbol(symbol: str) -> str:
    """A Binance symbol as K2 accepts it (letters and digits, and K2's own rule for every symbol)."""
    if not _SYMBOL.match(symbol):
        raise ValueError(f"{symbol!r} is not a Binance symbol (letters and digits, e.g. BTCUSDT)")
    try:
        check_name("symbol", symbol)  # K2's rule for every symbol, which Binance's narrows
    except FieldError as error:
        raise ValueError(str(error)) from None
    return symbol


def quote_asset(symbol: str) -> str:
    """The quote currency of a Binance symbol: BTCUSDT → USDT, ETHBTC → BTC, BTCFDUSD → FDUSD."""
    matches = [asset for asset in QUOTE_ASSETS if symbol.endswith(asset) and len(symbol) > len(asset)]
    if not matches:
        raise ValueError(f"{symbol}: no known quote asset suffix ({', '.join(sorted(set(QUOTE_ASSETS)))})")
    return max(matches, key=len)


class BinanceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="K2_INGEST_BINANCE_", extra="ignore")

    enabled: bool = False
    # Lists are comma-separated in the environment (K2_INGEST_BINANCE_SYMBOLS=BTCUSDT,ETHUSDT) or JSON.
    # ALL: every symbol the exchange trades (exchangeInfo from rest_endpoint), re-read every symbols_refresh_seconds.
    symbols: Annotated[list[str], NoDecode] = ["BTCUSDT", "ETHUSDT"]
    symbols_refresh_seconds: float = 300.0
    # With ALL: the most symbols followed (a listing past it is skipped and logged).
    max_symbols: int = 5000
    # Symbols with their own label in the per-symbol metrics; the rest are summed under "_other".
    metrics_symbols: int = 1000
    # Failover order: the first endpoint is used until it fails, then the next, round-robin.
    endpoints: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(LIVE_ENDPOINTS))
    time_unit: Literal["MICROSECOND", "MILLISECOND"] = "MICROSECOND"
    # Per symbol: <s>@trade → trades, <s>@bookTicker → quotes (best bid/ask).
    stream_types: Annotated[list[Literal["trade", "bookTicker"]], NoDecode] = ["trade", "bookTicker"]

    # Binance closes a connection after 24 h: each one is replaced (make-before-break) before that.
    rotation_interval_seconds: float = 23 * 3600.0
    # Rotations are spread by a random extra delay up to this, so connections do not rotate together.
    rotation_jitter_seconds: float = 600.0
    # Longest overlap of the old and the new connection during a make-before-break switch-over.
    switch_overlap_seconds: float = 10.0
    # Reconnect when no data frame arrives for this long (never while frames arrive or while publishing blocks).
    watchdog_silence_seconds: float = 30.0
    open_timeout_seconds: float = 10.0
    close_timeout_seconds: float = 5.0
    # Our keepalive pings (the server's pings are answered automatically); no pong within the timeout → reconnect.
    ping_interval_seconds: float = 20.0
    ping_timeout_seconds: float = 20.0

    backoff_base_seconds: float = 0.5
    backoff_cap_seconds: float = 30.0
    circuit_failure_threshold: int = 5
    circuit_cooldown_seconds: float = 60.0
    # Binance allows 300 connection attempts per 5 minutes per IP; stay below it.
    max_connection_attempts: int = 250
    connection_attempt_window_seconds: float = 300.0

    max_streams_per_connection: int = 1024
    # Streams named in the connect URL; the rest are subscribed with SUBSCRIBE messages.
    streams_in_url: int = 200
    streams_per_subscribe: int = 200
    # Binance closes a connection that sends more than 5 messages/s (pongs included): stay well below it.
    control_messages_per_second: int = 3
    control_reply_timeout_seconds: float = 10.0

    # Parsed records go to Kafka in batches of up to batch_size, after at most batch_linger_seconds.
    batch_size: int = 5000
    batch_linger_seconds: float = 0.005
    # Records parsed but not yet acknowledged by Kafka; when full, the feed stops reading from the sockets.
    max_buffered_records: int = 50_000
    # Attempts to publish a record Kafka refuses (with backoff); then it is dead-lettered with the reason.
    publish_attempts: int = 8
    # On stop: how long to keep trying to publish what was already parsed.
    stop_flush_timeout_seconds: float = 30.0
    recent_gaps: int = 20
    # A trade id further than this from its symbol's last one, ahead or behind, resets the symbol's sequence
    # (a corrupt frame, an exchange reset) instead of being a gap to backfill or a run of duplicates.
    trade_id_max_jump: int = 1_000_000
    # Gaps are filled by trade id from the REST API's historicalTrades where it is reachable (offline: reported only).
    backfill_enabled: bool = True
    rest_endpoint: str = "https://api.binance.com"
    backfill_max_trades_per_gap: int = 10_000
    backfill_max_pending_gaps: int = 100
    backfill_attempts: int = 3

    @field_validator("symbols", "endpoints", "stream_types", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [item.strip() for item in text.split(",")]
        return value

    @field_validator("symbols")
    @classmethod
    def _check_symbols(cls, symbols: list[str]) -> list[str]:
        normalised = list(dict.fromkeys(s.strip().upper() for s in symbols if s.strip()))
        if not normalised:
            raise ValueError("at least one symbol is required")
        if ALL_SYMBOLS in normalised:
            if len(normalised) > 1:
                raise ValueError(f"{ALL_SYMBOLS} stands alone: every symbol the exchange trades")
            return normalised
        for symbol in normalised:
            quote_asset(check_symbol(symbol))
        return normalised

    @property
    def all_symbols(self) -> bool:
        """Whether the symbols follow the exchange's list (exchangeInfo) instead of being fixed."""
        return self.symbols == [ALL_SYMBOLS]

    @field_validator("stream_types")
    @classmethod
    def _check_stream_types(cls, stream_types: list[str]) -> list[str]:
        stream_types = [kind for kind in stream_types if kind]
        if not stream_types:
            raise ValueError("at least one stream type (trade, bookTicker) is required")
        return list(dict.fromkeys(stream_types))

    @field_validator("endpoints")
    @classmethod
    def _check_endpoints(cls, endpoints: list[str]) -> list[str]:
        checked = []
        for endpoint in filter(None, endpoints):
            url = urlsplit(endpoint.strip().rstrip("/"))
            if url.scheme == "ws":
                if not is_loopback_host(url.hostname or ""):
                    raise ValueError(
                        f"{endpoint}: plain ws:// is only allowed for loopback hosts; use wss://"
                    )
            elif url.scheme != "wss":
                raise ValueError(f"{endpoint}: endpoints are wss:// URLs (ws:// for a local replay exchange)")
            if url.path or url.query:
                raise ValueError(f"{endpoint}: give the base URL only (the feed appends /stream?streams=...)")
            checked.append(endpoint.strip().rstrip("/"))
        if not checked:
            raise ValueError("at least one endpoint is required")
        return checked

    @field_validator("rest_endpoint")
    @classmethod
    def _check_rest_endpoint(cls, endpoint: str) -> str:
        url = urlsplit(endpoint.strip().rstrip("/"))
        if url.scheme != "https" and not (url.scheme == "http" and is_loopback_host(url.hostname or "")):
            raise ValueError(
                f"{endpoint}: the REST endpoint is an https:// URL (http:// for a local replay exchange)"
            )
        if url.path or url.query:
            raise ValueError(f"{endpoint}: give the base URL only (the feed appends /api/v3/...)")
        return endpoint.strip().rstrip("/")

    @model_validator(mode="after")
    def _check_limits(self) -> "BinanceSettings":
        if self.rotation_interval_seconds + self.rotation_jitter_seconds >= MAX_CONNECTION_LIFETIME:
            raise ValueError(
                "rotation interval plus jitter must stay below Binance's 24 h connection lifetime"
            )
        if not len(self.stream_types) <= self.max_streams_per_connection <= 1024:
            raise ValueError("max_streams_per_connection must hold one symbol's streams and be at most 1024")
        if not 1 <= self.control_messages_per_second <= 4:
            raise ValueError("control_messages_per_second must be 1..4: below Binance's 5 messages/s")
        for name in (
            "rotation_interval_seconds",
            "switch_overlap_seconds",
            "watchdog_silence_seconds",
            "open_timeout_seconds",
            "backoff_base_seconds",
            "backoff_cap_seconds",
            "circuit_cooldown_seconds",
            "batch_linger_seconds",
            "connection_attempt_window_seconds",
            "control_reply_timeout_seconds",
            "symbols_refresh_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.backoff_cap_seconds < self.backoff_base_seconds:
            raise ValueError("backoff_cap_seconds must be at least backoff_base_seconds")
        for name in (
            "circuit_failure_threshold",
            "batch_size",
            "max_buffered_records",
            "max_connection_attempts",
            "streams_in_url",
            "streams_per_subscribe",
            "backfill_max_trades_per_gap",
            "backfill_max_pending_gaps",
            "backfill_attempts",
            "publish_attempts",
            "max_symbols",
            "trade_id_max_jump",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.metrics_symbols < 0:
            raise ValueError("metrics_symbols must not be negative")
        if self.max_buffered_records < self.batch_size:
            raise ValueError("max_buffered_records must be at least batch_size")
        return self
