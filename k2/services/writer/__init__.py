"""Writer: every trade and quote on Kafka becomes exactly one row in Apache Iceberg.

Each table commit records, in its snapshot summary, the Kafka offsets it covers; on start and on every
partition assignment the writer seeks to the offsets its tables record, so the tables (not the consumer group)
are the source of truth and a crash at any instant neither loses nor duplicates a row (docs/tables.md).
"""
