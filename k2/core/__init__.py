"""K2's shared core: contracts (records, codecs), configuration, Kafka/Iceberg plumbing, telemetry, gRPC serving.

Services import this package; they never import each other.
"""
