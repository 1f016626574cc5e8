"""The ingest service: gRPC publishing, vendor file loads and exchange feeds, into Kafka."""
