import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from k2.auth.v1 import auth_pb2 as _auth_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("partitions", "tables", "last_commit_time", "last_commit_rows", "last_commit_bytes", "dead_lettered")
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    LAST_COMMIT_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_COMMIT_ROWS_FIELD_NUMBER: _ClassVar[int]
    LAST_COMMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionStatus]
    tables: _containers.RepeatedCompositeFieldContainer[TableStatus]
    last_commit_time: _timestamp_pb2.Timestamp
    last_commit_rows: int
    last_commit_bytes: int
    dead_lettered: int
    def __init__(self, partitions: _Optional[_Iterable[_Union[PartitionStatus, _Mapping]]] = ..., tables: _Optional[_Iterable[_Union[TableStatus, _Mapping]]] = ..., last_commit_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_commit_rows: _Optional[int] = ..., last_commit_bytes: _Optional[int] = ..., dead_lettered: _Optional[int] = ...) -> None: ...

class PartitionStatus(_message.Message):
    __slots__ = ("topic", "partition", "committed_offset", "high_watermark", "lag")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_OFFSET_FIELD_NUMBER: _ClassVar[int]
    HIGH_WATERMARK_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    committed_offset: int
    high_watermark: int
    lag: int
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., committed_offset: _Optional[int] = ..., high_watermark: _Optional[int] = ..., lag: _Optional[int] = ...) -> None: ...

class TableStatus(_message.Message):
    __slots__ = ("table", "snapshot_id", "rows", "files", "newest_event_time", "freshness_seconds")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    NEWEST_EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    FRESHNESS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    table: str
    snapshot_id: int
    rows: int
    files: int
    newest_event_time: _timestamp_pb2.Timestamp
    freshness_seconds: float
    def __init__(self, table: _Optional[str] = ..., snapshot_id: _Optional[int] = ..., rows: _Optional[int] = ..., files: _Optional[int] = ..., newest_event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., freshness_seconds: _Optional[float] = ...) -> None: ...

class FlushRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FlushResponse(_message.Message):
    __slots__ = ("commits",)
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    commits: _containers.RepeatedCompositeFieldContainer[TableCommit]
    def __init__(self, commits: _Optional[_Iterable[_Union[TableCommit, _Mapping]]] = ...) -> None: ...

class TableCommit(_message.Message):
    __slots__ = ("table", "snapshot_id", "rows")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    table: str
    snapshot_id: int
    rows: int
    def __init__(self, table: _Optional[str] = ..., snapshot_id: _Optional[int] = ..., rows: _Optional[int] = ...) -> None: ...

class CompactRequest(_message.Message):
    __slots__ = ("table", "start", "end", "target_file_size_bytes")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TARGET_FILE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    table: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    target_file_size_bytes: int
    def __init__(self, table: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., target_file_size_bytes: _Optional[int] = ...) -> None: ...

class CompactResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: CompactProgress
    result: CompactResult
    def __init__(self, progress: _Optional[_Union[CompactProgress, _Mapping]] = ..., result: _Optional[_Union[CompactResult, _Mapping]] = ...) -> None: ...

class CompactProgress(_message.Message):
    __slots__ = ("partition", "partitions_done", "partitions_total")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_DONE_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    partition: str
    partitions_done: int
    partitions_total: int
    def __init__(self, partition: _Optional[str] = ..., partitions_done: _Optional[int] = ..., partitions_total: _Optional[int] = ...) -> None: ...

class CompactResult(_message.Message):
    __slots__ = ("files_before", "files_after", "snapshot_id")
    FILES_BEFORE_FIELD_NUMBER: _ClassVar[int]
    FILES_AFTER_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    files_before: int
    files_after: int
    snapshot_id: int
    def __init__(self, files_before: _Optional[int] = ..., files_after: _Optional[int] = ..., snapshot_id: _Optional[int] = ...) -> None: ...
