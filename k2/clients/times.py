"""Times as people type them: ISO-8601 (naive means UTC) or relative to now ("-1h", "today")."""

import re
from datetime import UTC, datetime, timedelta

_RELATIVE = re.compile(r"^-(\d+)(s|m|h|d|w)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from ISO-8601 or a relative form.

    Accepted: "2014-03-10T10:05:44.516+11:00", "2014-03-10T00:05Z", "2014-03-10" (midnight UTC; naive means UTC),
    "now", "today" and "yesterday" (midnight UTC), and "-90s", "-15m", "-1h", "-2d", "-1w" (before now).

    >>> parse_time("2014-03-10T10:05:44.516+11:00")
    datetime.datetime(2014, 3, 9, 23, 5, 44, 516000, tzinfo=datetime.timezone.utc)
    >>> parse_time("-1h", now=datetime(2024, 1, 1, 12, tzinfo=UTC))
    datetime.datetime(2024, 1, 1, 11, 0, tzinfo=datetime.timezone.utc)
    """
    now = now or datetime.now(UTC)
    word = text.strip().lower()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if word == "now":
        return now
    if word == "today":
        return midnight
    if word == "yesterday":
        return midnight - timedelta(days=1)
    relative = _RELATIVE.match(word)
    if relative:
        return now - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use ISO-8601 such as 2014-03-10T10:00:00+11:00, "
            "or now, today, yesterday, -90s, -15m, -1h, -2d, -1w)"
        ) from None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
