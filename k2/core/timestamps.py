"""K2's one time base: a timestamp is whole microseconds since 1970-01-01T00:00Z (Avro timestamp-micros, Iceberg
timestamptz); a datetime without a time zone is read as UTC."""

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(value: datetime) -> int:
    delta = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    """Raises OverflowError beyond what a datetime holds (years 1 to 9999)."""
    return EPOCH + timedelta(microseconds=value)


MICROS_RANGE = (micros(datetime.min), micros(datetime.max))  # the microseconds a datetime can hold
