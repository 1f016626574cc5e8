"""The query service: history from Iceberg plus the Kafka tail not yet in Iceberg, OHLCV bars, the latest trade
and quote per symbol, and live subscriptions fanned out from one Kafka consumer (gRPC 50053, metrics 9103)."""
