"""The symbols the exchange trades now, from Binance's REST `GET /api/v3/exchangeInfo` (K2_INGEST_BINANCE_SYMBOLS=ALL).

The feed reads the list at start and every `symbols_refresh_seconds` after, so listings and delistings are
followed while it runs. A symbol counts when its status is TRADING; its currency is the quoteAsset the exchange
gives. A symbol K2 cannot take (a name outside K2's rule) is skipped and logged, never followed half-way. Requests
are retried a bounded number of times with jittered backoff; a refresh that fails keeps the list as it was.
"""

import asyncio
import json
import logging
import ssl
import urllib.error
import urllib.request
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from k2.core.records import FieldError, check_name

from .settings import BinanceSettings, check_symbol

log = logging.getLogger(__name__)
TRADING = "TRADING"
# Binance's full answer is a few MB (tens of MB with permission sets, which the query leaves out).
MAX_EXCHANGE_INFO_BYTES = 64 * 2**20
EXCHANGE_INFO_PATH = "/api/v3/exchangeInfo?symbolStatus=TRADING&showPermissionSets=false"


class ListingUnavailable(Exception):
    """exchangeInfo could not be read; the message says why."""

    def __init__(self, reason: str, retriable: bool):
        super().__init__(reason)
        self.retriable = retriable


def trading_symbols(body: Any) -> tuple[dict[str, str], dict[str, str]]:
    """exchangeInfo's answer → ({symbol: quote asset} of the TRADING symbols, {symbol: why it was skipped})."""
    if not isinstance(body, dict) or not isinstance(body.get("symbols"), list):
        raise ListingUnavailable(f"exchangeInfo without a symbols list: {str(body)[:80]}", False)
    listed: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for entry in body["symbols"]:
        if not isinstance(entry, dict) or entry.get("status") != TRADING:
            continue
        symbol, quote = entry.get("symbol"), entry.get("quoteAsset")
        if not isinstance(symbol, str) or not isinstance(quote, str):
            skipped[str(symbol)[:40]] = "symbol or quoteAsset is not a string"
            continue
        try:
            check_symbol(symbol)
            check_name("currency", quote)
        except (ValueError, FieldError) as error:
            skipped[symbol[:40]] = str(error)
            continue
        listed[symbol] = quote
    return listed, skipped


class ExchangeListing:
    """Reads the TRADING symbols from the settings' rest_endpoint."""

    def __init__(self, settings: BinanceSettings):
        self.settings = settings
        self.url = settings.rest_endpoint + EXCHANGE_INFO_PATH
        self.reads = 0
        self.failures = 0
        self._tls = ssl.create_default_context()  # certificate and host name verification, always

    async def read(self) -> dict[str, str]:
        """{symbol: quote asset} of every TRADING symbol K2 can take; raises ListingUnavailable after the retries."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.backfill_attempts),
            wait=wait_exponential_jitter(
                multiplier=self.settings.backoff_base_seconds, max=self.settings.backoff_cap_seconds
            ),
            retry=retry_if_exception(lambda error: isinstance(error, ListingUnavailable) and error.retriable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    body = await asyncio.to_thread(self._get)
        except ListingUnavailable:
            self.failures += 1
            raise
        listed, skipped = trading_symbols(body)
        self.reads += 1
        for symbol, reason in list(skipped.items())[:20]:
            log.warning("binance exchangeInfo: %s skipped: %s", symbol, reason)
        if len(skipped) > 20:
            log.warning("binance exchangeInfo: %d more symbols skipped", len(skipped) - 20)
        return listed

    def _get(self) -> Any:
        endpoint = self.settings.rest_endpoint
        try:
            with urllib.request.urlopen(
                self.url,
                timeout=self.settings.open_timeout_seconds,
                context=self._tls if self.url.startswith("https:") else None,
            ) as response:
                data = response.read(MAX_EXCHANGE_INFO_BYTES + 1)
        except urllib.error.HTTPError as error:
            raise ListingUnavailable(f"HTTP {error.code} from {endpoint}", error.code >= 500) from None
        except (urllib.error.URLError, OSError) as error:
            raise ListingUnavailable(f"{endpoint} unreachable ({error})", True) from None
        if len(data) > MAX_EXCHANGE_INFO_BYTES:
            raise ListingUnavailable(
                f"an exchangeInfo above {MAX_EXCHANGE_INFO_BYTES} bytes from {endpoint}", False
            )
        try:
            return json.loads(data, parse_float=str)
        except ValueError:
            raise ListingUnavailable(f"an exchangeInfo that is not JSON from {endpoint}", False) from None
