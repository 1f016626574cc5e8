"""How a Kafka message names its Avro writer schema: its framing.

- single-object (the default): C3 01, the schema's 8-byte CRC-64-AVRO fingerprint, the Avro body (k2.core.avro).
  Self-describing: readers need no registry service.
- registry (K2_KAFKA_SCHEMA_REGISTRY_URL set): Confluent's wire format, 00, the schema's 4-byte big-endian id in a
  schema registry, the Avro body: what Kafka Connect, Flink, Spark and ksqlDB read with their stock converters. A
  service registers the current schemas at start, under TopicNameStrategy subjects (<topic>-value).

K2's codecs write and read single-object messages; framing happens here, at the Kafka boundary. A writer frames
its messages (`framed`); a reader takes either framing whatever it writes: its fast paths know the headers of
the current schema versions (`current_headers`), and any other message is read as the single-object message of
the same schema version (`single_object`), a registry id being looked up once per process.
"""

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests
from cachetools import LRUCache
from tenacity import retry, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_exponential

from k2.core.avro import (
    CURRENT,
    CURRENT_HEADERS,
    HEADER_SIZE,
    MAGIC,
    VERSIONS,
    DecodeError,
    decode,
    schema_fingerprint,
)
from k2.core.config import KafkaSettings
from k2.core.kafka import TOPIC_FOR, topic_name
from k2.core.records import Record, RecordKind

REGISTRY_MAGIC = b"\x00"
REGISTRY_HEADER_SIZE = 5
HTTP_TIMEOUT_SECONDS = 5.0
# A service waits this long at start for the registry to take its schemas (e.g. while both start together).
REGISTER_SECONDS = 60.0
_CONTENT_TYPE = {"Content-Type": "application/vnd.schemaregistry.v1+json"}
_KNOWN_FINGERPRINTS = {version.fingerprint for versions in VERSIONS.values() for version in versions}


class SchemaRegistryUnavailable(RuntimeError):
    """The registry did not answer (or answered with an error) within the retries: nothing is known about the
    message, so it is not refused either. It propagates: the writer re-reads from its tables' offsets, the live
    fan-out re-reads the poll, a replay or query call fails and may be retried."""


def registry_header(schema_id: int) -> bytes:
    return REGISTRY_MAGIC + schema_id.to_bytes(4, "big")


@dataclass(frozen=True)
class Framing:
    """One service's framing: single-object without a registry; with one, the ids its current schemas have there."""

    registry_url: str = ""
    schema_ids: Mapping[RecordKind, int] = field(default_factory=dict)

    @classmethod
    def connect(cls, settings: KafkaSettings) -> "Framing":
        """The framing the settings ask for; with a registry, once it has the current schemas (bounded retries)."""
        url = settings.schema_registry_url.rstrip("/")
        if not url:
            return SINGLE_OBJECT
        return cls(
            url,
            {
                kind: _register(url, f"{topic_name(settings, topic)}-value", CURRENT[kind].schema)
                for kind, topic in TOPIC_FOR.items()
            },
        )

    def header(self, kind: RecordKind) -> bytes:
        """What this framing writes before a current-version message's Avro body."""
        schema_id = self.schema_ids.get(kind)
        return CURRENT_HEADERS[kind] if schema_id is None else registry_header(schema_id)

    def current_headers(self, kind: RecordKind) -> tuple[bytes, ...]:
        """The headers a message in the current schema version of `kind` starts with in either framing."""
        schema_id = self.schema_ids.get(kind)
        return (
            (CURRENT_HEADERS[kind],)
            if schema_id is None
            else (CURRENT_HEADERS[kind], registry_header(schema_id))
        )

    def framed(self, kind: RecordKind, values: Sequence[bytes]) -> Sequence[bytes]:
        """Current-version messages of `kind` as avro.encode wrote them (single-object), in this framing."""
        if kind not in self.schema_ids:
            return values
        header = self.header(kind)
        return [header + memoryview(value)[HEADER_SIZE:] for value in values]

    def single_object(self, value: bytes) -> bytes:
        """The message in single-object framing (a value that is not registry-framed as it is, for avro.decode to
        judge); DecodeError for a registry id that is not a K2 schema version."""
        if value[:1] != REGISTRY_MAGIC:
            return value
        if len(value) < REGISTRY_HEADER_SIZE:
            raise DecodeError("registry-framed (00) but shorter than the 5-byte header")
        return (
            MAGIC
            + self._fingerprint(int.from_bytes(value[1:REGISTRY_HEADER_SIZE], "big"))
            + value[REGISTRY_HEADER_SIZE:]
        )

    def decode(self, value: bytes) -> tuple[RecordKind, Record]:
        """avro.decode of a message in either framing."""
        return decode(self.single_object(value))

    def _fingerprint(self, schema_id: int) -> bytes:
        for kind, current_id in self.schema_ids.items():
            if current_id == schema_id:
                return CURRENT[kind].fingerprint
        if not self.registry_url:
            raise DecodeError(
                f"registry-framed (schema id {schema_id}) but no schema registry is configured "
                "(K2_KAFKA_SCHEMA_REGISTRY_URL)"
            )
        key = (self.registry_url, schema_id)
        with _resolved_lock:
            found = _resolved.get(key)
        if found is None:
            found = _resolve(self.registry_url, schema_id)
            with _resolved_lock:
                _resolved[key] = found
        if isinstance(found, str):
            raise DecodeError(found)
        return found


SINGLE_OBJECT = Framing()

# (registry URL, schema id) → the writer schema's fingerprint, or why the id is not a K2 schema version. An id
# always names the same schema, so what was found stays; the bound keeps ids of foreign messages from piling up.
_resolved: LRUCache[tuple[str, int], bytes | str] = LRUCache(maxsize=1024)
_resolved_lock = threading.Lock()


def _unavailable(error: requests.RequestException | str) -> SchemaRegistryUnavailable:
    return SchemaRegistryUnavailable(f"schema registry unavailable: {error}")


def _request(method: str, url: str, **kwargs: Any) -> requests.Response:
    """The registry's answer, unless it is a server error or none came (SchemaRegistryUnavailable)."""
    try:
        response = requests.request(method, url, timeout=HTTP_TIMEOUT_SECONDS, **kwargs)
    except requests.RequestException as error:
        raise _unavailable(error) from None
    if response.status_code >= 500 or response.status_code == 429:
        raise _unavailable(f"{method} {url}: HTTP {response.status_code} {response.text[:200]}")
    return response


@retry(
    retry=retry_if_exception_type(SchemaRegistryUnavailable),
    stop=stop_after_delay(REGISTER_SECONDS),
    wait=wait_exponential(multiplier=0.2, max=5.0),
    reraise=True,
)
def _register(url: str, subject: str, schema: dict[str, Any]) -> int:
    """The id of `schema` under `subject`, registering it there unless it already is (the registry's rules
    apply: an incompatible schema is refused)."""
    endpoint = f"{url}/subjects/{quote(subject, safe='')}/versions"
    response = _request("POST", endpoint, json={"schema": json.dumps(schema)}, headers=_CONTENT_TYPE)
    if response.status_code != 200:
        raise RuntimeError(
            f"the schema registry refused the schema {schema['name']} under {subject}: "
            f"HTTP {response.status_code} {response.text[:500]}"
        )
    schema_id: int = response.json()["id"]
    return schema_id


@retry(
    retry=retry_if_exception_type(SchemaRegistryUnavailable),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.2, max=1.0),
    reraise=True,
)
def _resolve(url: str, schema_id: int) -> bytes | str:
    """The fingerprint of the K2 schema version with this id in the registry, or why there is none."""
    response = _request("GET", f"{url}/schemas/ids/{schema_id}")
    if response.status_code == 404:
        return f"schema id {schema_id} is not in the schema registry"
    if response.status_code != 200:  # e.g. refused credentials: a fault of the setup, not of the message
        raise _unavailable(f"GET schema id {schema_id}: HTTP {response.status_code} {response.text[:200]}")
    try:
        found = response.json()
        if found.get("schemaType", "AVRO") != "AVRO":
            return f"schema id {schema_id} is a {found['schemaType']} schema, not Avro"
        fingerprint = schema_fingerprint(json.loads(found["schema"]))
    except Exception as error:  # noqa: BLE001 - whatever the registry holds, the message is then not K2's
        return f"schema id {schema_id} is not a readable Avro schema: {type(error).__name__}: {error}"
    if fingerprint not in _KNOWN_FINGERPRINTS:
        return f"schema id {schema_id} is not a K2 schema version (fingerprint {fingerprint.hex()})"
    return fingerprint
