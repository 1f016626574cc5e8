"""Decoding off the consume loop: batches are decoded in worker processes while the loop consumes the next ones
and commits (K2_WRITER_DECODE_PROCESSES; 0 decodes on the loop's thread). The compiled decoder releases the GIL,
but messages it hands back to the plain path are decoded in Python, which holds it."""

import gc
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor

from k2.core.arrow import BatchDecoder, DecodedBatch, batch_decoder
from k2.core.framing import Framing
from k2.core.records import QUOTE, TRADE, RecordKind

# The plain path allocates a dict per message: collecting the young generation less often saved ~15% of its CPU.
# The writer's process (WriterApp) and its decoding workers both run with these thresholds.
GC_THRESHOLDS = (50_000, 20, 20)
_decoders: dict[RecordKind, BatchDecoder] = {}


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)  # the writer died (kill -9): a worker must not outlive it


def _start_worker(parent: int, framing: Framing) -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    _decoders.update({TRADE: batch_decoder(TRADE, framing), QUOTE: batch_decoder(QUOTE, framing)})
    threading.Thread(target=_exit_with, args=(parent,), name="exit-with-writer", daemon=True).start()


def _ready() -> None:
    """Run once per worker at start-up, so the first batch does not wait for the workers to import."""


def _decode(kind: RecordKind, values: list[bytes | None]) -> DecodedBatch:
    return _decoders[kind].decode(values)


class Decoders:
    def __init__(self, processes: int, framing: Framing):
        self.processes = processes
        self._framing = framing
        self._inline = {TRADE: batch_decoder(TRADE, framing), QUOTE: batch_decoder(QUOTE, framing)}
        self._pool: ProcessPoolExecutor | None = None
        self.restart()

    def restart(self) -> None:
        """A fresh pool (after a worker died: a broken pool refuses new work)."""
        self.close()
        if self.processes:
            # spawn: the workers inherit none of the parent's threads (librdkafka, gRPC) or locks.
            self._pool = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(os.getpid(), self._framing),
            )
            for future in [self._pool.submit(_ready) for _ in range(self.processes)]:
                future.result()

    def submit(self, kind: RecordKind, values: list[bytes | None]) -> Future[DecodedBatch]:
        if self._pool is not None:
            return self._pool.submit(_decode, kind, values)
        future: Future[DecodedBatch] = Future()
        future.set_result(self._inline[kind].decode(values))
        return future

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
