"""python -m k2.services.replay_exchange [--host H] [--port P] [--symbols A,B] [--rate realtime|max|N] ...

Prints "Replay exchange (Binance protocol) on ws://H:P" once listening (with the real port when
--port 0) and runs until SIGTERM or SIGINT, then exits 0. Logs go to stderr.
"""

import argparse
import asyncio
import logging
import signal
import sys

from .server import ExchangeConfig, ReplayExchange, parse_rate


def _rate(value: str) -> str | int:
    try:
        return parse_rate(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    defaults = ExchangeConfig()
    parser = argparse.ArgumentParser(
        prog="python -m k2.services.replay_exchange",
        description="Local exchange speaking Binance Spot's market-data streams.",
    )
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port, help="0 picks a free port")
    parser.add_argument(
        "--symbols", default=",".join(defaults.symbols), help="comma-separated, e.g. BTCUSDT,ETHUSDT,SHIBUSDT"
    )
    parser.add_argument(
        "--rate",
        type=_rate,
        default=defaults.rate,
        help="realtime (bursty, see --speed), max, or N trades per second across symbols",
    )
    parser.add_argument("--speed", type=float, default=defaults.speed, help="real-time multiplier")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--replay", metavar="FILE", help="JSON-lines recording of combined-stream frames")
    parser.add_argument("--ping-interval", type=float, default=defaults.ping_interval)
    parser.add_argument("--pong-timeout", type=float, default=defaults.pong_timeout)
    parser.add_argument(
        "--max-lifetime",
        type=float,
        default=defaults.max_lifetime,
        help="seconds before a connection is closed (Binance: 24 h)",
    )
    parser.add_argument(
        "--max-connection-attempts",
        type=int,
        default=defaults.max_connection_attempts,
        help="per client IP per 5 minutes; 0 disables",
    )
    parser.add_argument(
        "--market-symbols",
        type=int,
        default=defaults.market_symbols,
        help="a generated full market of N symbols with Zipf activity (instead of --symbols)",
    )
    parser.add_argument(
        "--quotes-per-trade",
        type=float,
        default=defaults.quotes_per_trade,
        help="bookTicker updates per trade (0: about 0.75)",
    )
    parser.add_argument(
        "--rest-history-trades",
        type=int,
        default=defaults.rest_history_trades,
        help="trades per symbol historicalTrades can return",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


async def _serve(config: ExchangeConfig) -> int:
    exchange = ReplayExchange(config)
    await exchange.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"Replay exchange (Binance protocol) on {exchange.url}", flush=True)
    stopped = asyncio.create_task(stop.wait())
    closed = asyncio.create_task(exchange.wait_closed())
    await asyncio.wait([stopped, closed], return_when=asyncio.FIRST_COMPLETED)
    await exchange.stop()
    for task in (stopped, closed):
        task.cancel()
    if exchange.failure is not None:
        print(f"replay exchange failed: {exchange.failure!r}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        config = ExchangeConfig(
            host=args.host,
            port=args.port,
            symbols=tuple(s for s in args.symbols.split(",") if s),
            rate=args.rate,
            speed=args.speed,
            seed=args.seed,
            replay_path=args.replay,
            ping_interval=args.ping_interval,
            pong_timeout=args.pong_timeout,
            max_lifetime=args.max_lifetime,
            max_connection_attempts=args.max_connection_attempts,
            market_symbols=args.market_symbols,
            quotes_per_trade=args.quotes_per_trade,
            rest_history_trades=args.rest_history_trades,
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(config))
    except (ValueError, OSError) as exc:  # a bad replay file, a port in use
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
