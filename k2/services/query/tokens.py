"""Opaque tokens: base64url of a small JSON object, then "." and base64url of its HMAC-SHA256 under the service's
token key. They carry positions, not secrets, but a position names what the service will read (a snapshot, a
Kafka range): the signature makes sure the service only ever reads what it handed out itself. The first of the
configured keys (K2_QUERY_TOKEN_KEYS) signs, every one of them verifies, so keys rotate without breaking tokens
in flight: add the new key after the old, move it first once every replica has it, drop the old later. Without a
configured key the service uses the key in K2_QUERY_TOKEN_KEY_FILE (made once, random, readable by its owner
only), so tokens hold across restarts on one machine; replicas on several machines need configured keys. A token that is not signed by one of the keys, or whose shape is wrong or that belongs
to another request, is refused (INVALID_ARGUMENT).

Page token (QueryTrades/QueryQuotes): the Iceberg snapshot the first page scanned, the Kafka tail range it added
([the snapshot's recorded offsets, the high watermarks at the first request)), and the key of the last row
returned, so every page reads the same data and continues exactly after the previous one.

Resume token (subscriptions): the stream's position. Live and Kafka-replay positions are the next offset of every
partition of the topic; while a stream still replays Iceberg history, the snapshot and the last row's key too.

Every field is checked on decoding, its type and its range (a partition is a 32-bit number, offsets and ids
64-bit, times within years 1 to 9999), so a token that decodes holds only values every later step can take.
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from k2.core.records import FieldError, RecordKind
from k2.core.timestamps import MICROS_RANGE
from k2.services.query.selection import Key, Selection

VERSION = 1
KIND_CODES: dict[RecordKind, str] = {"trade": "t", "quote": "q"}
KINDS = {code: kind for kind, code in KIND_CODES.items()}
Offsets = dict[int, int]
INT64 = (-(2**63), 2**63 - 1)
PARTITIONS = (0, 2**31 - 1)
OFFSETS = (0, 2**63 - 1)


MIN_KEY_BYTES = 16
_PROCESS_KEY = secrets.token_bytes(32)  # no key configured and no key file: tokens hold for this process only


def _key_from_file(path: Path) -> bytes:
    """The key in `path`, made first (32 random bytes, hex, mode 0600) if there is none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32))
    key = path.read_text().strip().encode()
    if len(key) < MIN_KEY_BYTES:  # e.g. read while another process was still writing it
        raise ValueError(f"{path}: a token key of at least {MIN_KEY_BYTES} bytes is needed")
    return key


class TokenKeys:
    """The keys tokens are signed with: the first signs, any verifies."""

    def __init__(self, keys: list[SecretStr], key_file: Path | None = None):
        configured = [key.get_secret_value().encode() for key in keys]
        for index, key in enumerate(configured):
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"K2_QUERY_TOKEN_KEYS[{index}]: at least {MIN_KEY_BYTES} bytes")
        if not configured:
            configured = [_key_from_file(key_file) if key_file is not None else _PROCESS_KEY]
        self._keys = configured

    def __repr__(self) -> str:
        return f"TokenKeys({len(self._keys)} keys)"  # never the keys themselves

    def sign(self, data: bytes) -> bytes:
        return hmac.digest(self._keys[0], data, hashlib.sha256)

    def verify(self, data: bytes, signature: bytes) -> bool:
        return any(
            hmac.compare_digest(hmac.digest(key, data, hashlib.sha256), signature) for key in self._keys
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _encode(payload: dict[str, Any], keys: TokenKeys) -> str:
    data = json.dumps(payload, separators=(",", ":")).encode()
    return f"{_b64(data)}.{_b64(keys.sign(data))}"


def _decode(field_name: str, token: str, keys: TokenKeys) -> dict[str, Any]:
    if len(token) > 8192:
        raise FieldError(field_name, "too long")
    body, dot, signature = token.rpartition(".")
    try:
        data, mac = _unb64(body), _unb64(signature)
    except (binascii.Error, ValueError):
        raise FieldError(field_name, "not a token issued by this service") from None
    # only the one encoding the service writes: base64 ignores a flipped unused bit of a last character
    if not dot or _b64(data) != body or _b64(mac) != signature or not keys.verify(data, mac):
        raise FieldError(field_name, "not a token issued by this service (its signature does not match)")
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deeply
        raise FieldError(field_name, "not a token issued by this service") from None
    if not isinstance(payload, dict) or payload.get("v") != VERSION:
        raise FieldError(field_name, "not a token issued by this service (or from an incompatible version)")
    return payload


def _int(field_name: str, value: Any, what: str, bounds: tuple[int, int], *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise FieldError(field_name, f"malformed token: {what} is not an integer")
    low, high = bounds
    if not low <= value <= high:
        raise FieldError(field_name, f"malformed token: {what} is outside {low} to {high}")
    return value


def _offsets_out(offsets: Offsets) -> list[list[int]]:
    return [[p, o] for p, o in sorted(offsets.items())]


def _offsets_in(field_name: str, value: Any) -> Offsets:
    if not isinstance(value, list):
        raise FieldError(field_name, "malformed token: no offsets")
    offsets: Offsets = {}
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise FieldError(field_name, "malformed token: an offset is not a [partition, offset] pair")
        partition = _int(field_name, item[0], "a partition", PARTITIONS)
        offsets[partition] = _int(field_name, item[1], "an offset", OFFSETS)
    return offsets


def _key_out(key: Key | None) -> list[Any] | None:
    return None if key is None else list(key)


def _key_in(field_name: str, value: Any) -> Key | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 5
        or not all(isinstance(v, str) for v in value[1:3])
        or not isinstance(value[4], str)
    ):
        raise FieldError(field_name, "malformed token: not a row's key")
    return (
        _int(field_name, value[0], "a row's time", MICROS_RANGE),
        value[1],
        value[2],
        _int(field_name, value[3], "a row's sequence", INT64, optional=True),
        value[4],
    )


def query_digest(kind: RecordKind, selection: Selection) -> str:
    """Names a query (kind and selection) so a page token is only accepted by the query that issued it."""
    text = json.dumps(
        [
            kind,
            sorted(selection.symbols or ()),
            sorted(selection.exchanges or ()),
            selection.start,
            selection.end,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PageToken:
    query: str
    snapshot_id: int | None
    tail_start: Offsets
    tail_end: Offsets
    after: Key

    def encode(self, keys: TokenKeys) -> str:
        return _encode(
            {
                "v": VERSION,
                "q": self.query,
                "s": self.snapshot_id,
                "ts": _offsets_out(self.tail_start),
                "te": _offsets_out(self.tail_end),
                "a": _key_out(self.after),
            },
            keys,
        )

    @classmethod
    def decode(cls, token: str, query: str, keys: TokenKeys) -> "PageToken":
        name = "page_token"
        payload = _decode(name, token, keys)
        if payload.get("q") != query:
            raise FieldError(
                name, "belongs to a different query (symbols, exchange, start and end must stay)"
            )
        after = _key_in(name, payload.get("a"))
        if after is None:
            raise FieldError(name, "malformed token: no row's key")
        return cls(
            query,
            _int(name, payload.get("s"), "the snapshot", INT64, optional=True),
            _offsets_in(name, payload.get("ts")),
            _offsets_in(name, payload.get("te")),
            after,
        )


@dataclass(frozen=True)
class StreamPosition:
    kind: RecordKind
    offsets: Offsets  # next Kafka offset per partition of the kind's topic
    since: int | None = None  # only records with timestamp >= since (a subscription from a past time), µs
    snapshot_id: int | None = None  # set while the stream replays this Iceberg snapshot...
    after: Key | None = None  # ...after this row (None: from its start)
    # Newest timestamp (µs) the stream had delivered, or when it started: where it restarts from history if its
    # offsets have left Kafka (retention).
    mark: int = 0

    def encode(self, keys: TokenKeys) -> str:
        payload: dict[str, Any] = {
            "v": VERSION,
            "k": KIND_CODES[self.kind],
            "o": _offsets_out(self.offsets),
            "m": self.mark,
        }
        if self.since is not None:
            payload["s"] = self.since
        if self.snapshot_id is not None:
            payload["sn"] = self.snapshot_id
            payload["a"] = _key_out(self.after)
        return _encode(payload, keys)

    @classmethod
    def decode(cls, token: str, kind: RecordKind, keys: TokenKeys) -> "StreamPosition":
        name = "resume_token"
        payload = _decode(name, token, keys)
        if payload.get("k") != KIND_CODES[kind]:
            raise FieldError(name, f"not a {kind} stream's token")
        return cls(
            kind,
            _offsets_in(name, payload.get("o")),
            _int(name, payload.get("s"), "the start time", MICROS_RANGE, optional=True),
            _int(name, payload.get("sn"), "the snapshot", INT64, optional=True),
            _key_in(name, payload.get("a")),
            _int(name, payload.get("m"), "the time mark", MICROS_RANGE),
        )
