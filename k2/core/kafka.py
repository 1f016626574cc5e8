"""Kafka plumbing: the topics (declared once, provisioned idempotently), client configuration, dead-lettering."""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from k2.core.config import KafkaSettings
from k2.core.records import QUOTE, TRADE, RecordKind

log = logging.getLogger(__name__)
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


# Trades and quotes are keyed by symbol (per-symbol order); 6 partitions let up to 6 writers share the load.
TRADES = Topic("k2.trades", 6, {"retention.ms": str(7 * DAY_MS), "compression.type": "producer"})
QUOTES = Topic("k2.quotes", 6, {"retention.ms": str(7 * DAY_MS), "compression.type": "producer"})
# Rejected input with its reason in headers (k2.dlq.*), the raw payload as the value.
DEAD_LETTER = Topic("k2.deadletter", 1, {"retention.ms": str(30 * DAY_MS), "compression.type": "producer"})
TOPICS = (TRADES, QUOTES, DEAD_LETTER)
TOPIC_FOR: dict[RecordKind, Topic] = {TRADE: TRADES, QUOTE: QUOTES}

# Dead-letter headers, after Kafka Connect's errors.deadletterqueue.context.headers convention.
DLQ_REASON = "k2.dlq.reason"
DLQ_FIELD = "k2.dlq.field"
DLQ_SOURCE = "k2.dlq.source"
DLQ_SOURCE_TOPIC = "k2.dlq.topic"
DLQ_SOURCE_PARTITION = "k2.dlq.partition"
DLQ_SOURCE_OFFSET = "k2.dlq.offset"

ClientConfig = dict[str, str | int | float | bool]  # librdkafka properties


def topic_name(settings: KafkaSettings, topic: Topic) -> str:
    return settings.topic_prefix + topic.name


def client_config(settings: KafkaSettings) -> ClientConfig:
    # TCP_NODELAY, as the Java clients set it: with Nagle on, a small produce or fetch can wait for the delayed ACK.
    config: ClientConfig = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol,
        "socket.nagle.disable": True,
    }
    if settings.sasl_mechanism:
        config |= {
            "sasl.mechanism": settings.sasl_mechanism,
            "sasl.username": settings.sasl_username,
            "sasl.password": settings.sasl_password.get_secret_value(),
        }
    if settings.ssl_ca_location:
        config["ssl.ca.location"] = settings.ssl_ca_location
    return config


def producer_config(settings: KafkaSettings, **overrides: str | float) -> ClientConfig:
    """Idempotent, acks=all, compressed, with a bounded local buffer (Producer.produce raises BufferError when
    full, which callers turn into backpressure)."""
    config: ClientConfig = client_config(settings) | {
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": settings.compression,
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "queue.buffering.max.kbytes": settings.producer_buffer_bytes // 1024,
        "queue.buffering.max.messages": 1_000_000,
        "message.timeout.ms": 120_000,
    }
    return config | overrides


def consumer_config(settings: KafkaSettings, group_id: str, **overrides: str | float) -> ClientConfig:
    config: ClientConfig = client_config(settings) | {
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "fetch.max.bytes": 64 * 1024 * 1024,
        "queued.max.messages.kbytes": 64 * 1024,
    }
    return config | overrides


def provision_topics(
    settings: KafkaSettings, topics: Sequence[Topic] = TOPICS, timeout: float = 30.0
) -> list[str]:
    """Creates missing topics, with the settings' replication factor and min.insync.replicas; existing ones are
    left as they are. Returns the names created."""
    admin = AdminClient(client_config(settings))
    existing = set(admin.list_topics(timeout=timeout).topics)
    durability = (
        {"min.insync.replicas": str(settings.min_insync_replicas)} if settings.min_insync_replicas else {}
    )
    wanted = [
        NewTopic(
            topic_name(settings, t),
            num_partitions=t.partitions,
            replication_factor=settings.replication_factor,
            config=t.config | durability,
        )
        for t in topics
        if topic_name(settings, t) not in existing
    ]
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items() if wanted else []:
        try:
            future.result()
            created.append(name)
        except KafkaException as error:
            if error.args[0].name() != "TOPIC_ALREADY_EXISTS":  # a concurrent provisioner won the race
                raise
    return created


async def watch_reachability(
    settings: KafkaSettings,
    on_change: Callable[[bool], Awaitable[None]],
    interval: float = 5.0,
    timeout: float = 5.0,
) -> None:
    """Calls on_change(reachable) at the first check and whenever Kafka's reachability changes, until cancelled:
    how a service's health follows its Kafka dependency."""
    admin = AdminClient(client_config(settings))
    reachable: bool | None = None
    while True:
        try:
            await asyncio.to_thread(admin.list_topics, timeout=timeout)
            now_reachable = True
        except KafkaException:
            now_reachable = False
        if now_reachable != reachable:
            reachable = now_reachable
            if not reachable:
                log.warning("Kafka at %s is unreachable", settings.bootstrap_servers)
            await on_change(reachable)
        await asyncio.sleep(interval)


def dead_letter_headers(
    reason: str,
    source: str,
    field_name: str = "",
    *,
    topic: str = "",
    partition: int | None = None,
    offset: int | None = None,
) -> list[tuple[str, bytes]]:
    headers = [(DLQ_REASON, reason.encode()), (DLQ_SOURCE, source.encode())]
    if field_name:
        headers.append((DLQ_FIELD, field_name.encode()))
    if topic:
        headers += [
            (DLQ_SOURCE_TOPIC, topic.encode()),
            (DLQ_SOURCE_PARTITION, str(partition).encode()),
            (DLQ_SOURCE_OFFSET, str(offset).encode()),
        ]
    return headers


def main() -> None:
    """`python -m k2.core.kafka`: provision the topics on the configured cluster."""
    logging.basicConfig(level=logging.INFO)
    settings = KafkaSettings()
    created = provision_topics(settings)
    print(
        f"Topics on {settings.bootstrap_servers}: {', '.join(topic_name(settings, t) for t in TOPICS)}"
        f" ({len(created)} created)"
    )


if __name__ == "__main__":
    main()
