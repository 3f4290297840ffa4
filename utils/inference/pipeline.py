"""Background threads that overlap reading, the model and writing, in bounded memory.

``Prefetcher`` pulls inputs from a source (a list of paths, a video's frames) and prepares
them (decode, resize) in worker threads while the caller runs the model; ``OrderedSink`` runs
the per-input output step (draw, encode, write) in one writer thread. Both keep the input
order, hold a fixed number of inputs however long the source (a 5,000-image folder, an hour of
video), and hand a failure in one of their threads to the caller's thread, naming the input.

Threads, not processes: OpenCV's decode, resize and encode and torch's kernels release the GIL,
so threads overlap them without pickling every decoded image between processes
(``python -m benchmarks.pipeline`` measures the gain).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from utils.errors import InputError

T = TypeVar("T")
R = TypeVar("R")

_POLL_S = 0.1  # how often a blocked thread checks whether it should stop


class PipelineError(RuntimeError):
    """A stage failed unexpectedly in a background thread: ``str(err)`` is
    ``'<input>: <ExceptionType>: <message>'`` and ``__cause__`` is the original exception."""

    @classmethod
    def wrap(cls, what: str, err: BaseException) -> PipelineError:
        error = cls(f"{what}: {type(err).__name__}: {err}")
        error.__cause__ = err
        return error


@dataclass
class Prepared(Generic[T, R]):
    """One input and what ``prepare`` made of it, or the exception it raised."""

    item: T
    value: R | None = None
    error: BaseException | None = None


@dataclass
class _Job(Generic[T, R]):
    item: T
    value: R | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class _SourceFailed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class Prefetcher(Generic[T, R]):
    """Iterates ``Prepared(item, prepare(item))`` in the order of ``items``.

    ``items`` is iterated in one background thread (so a video decodes while the model runs)
    and ``prepare`` runs in ``workers`` more; at most ``depth`` items are pulled from ``items``
    and not yet handed out, so memory stays bounded whatever the length of the source.

    An exception of ``prepare`` is handed out in ``Prepared.error`` for the caller to decide
    (report a bad file and go on, or stop); one raised while iterating ``items`` is raised by
    the iteration as ``PipelineError`` naming ``source``. Use it as a context manager: leaving
    the ``with`` block, also through an exception or Ctrl-C, stops and joins its threads (each
    finishes at most the input it holds), so a video capture can be released afterwards.

    Args:
        items: the inputs, pulled lazily.
        prepare: the per-input work run in the worker threads.
        depth: how many inputs may be pulled ahead of the consumer (>= 1).
        workers: threads running ``prepare`` (>= 1).
        source: names the source in errors raised while iterating ``items``.
    """

    def __init__(
        self,
        items: Iterable[T],
        prepare: Callable[[T], R],
        *,
        depth: int,
        workers: int = 1,
        source: str = "input",
    ) -> None:
        if depth < 1 or workers < 1:
            raise InputError(
                f"Prefetcher needs depth >= 1 and workers >= 1, got {depth}, {workers}"
            )
        self._items = iter(items)
        self._prepare = prepare
        self._source = source
        self._slots = threading.Semaphore(depth)
        self._stop = threading.Event()
        self._ordered: queue.Queue = queue.Queue()  # bounded by the semaphore
        self._work: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._feed, name="prefetch-feed", daemon=True)]
        self._threads += [
            threading.Thread(target=self._run_jobs, name=f"prefetch-{i}", daemon=True)
            for i in range(workers)
        ]
        self._started = False

    def __enter__(self) -> Prefetcher[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Prepared[T, R]]:
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()
        while True:
            job = self._ordered.get()
            if job is _END:
                return
            if isinstance(job, _SourceFailed):
                raise PipelineError.wrap(self._source, job.error)
            job.done.wait()
            self._slots.release()
            yield Prepared(job.item, job.value, job.error)

    def close(self) -> None:
        """Stops pulling inputs and joins the threads."""
        self._stop.set()
        if self._started:
            for thread in self._threads:
                thread.join()

    def _feed(self) -> None:
        try:
            while True:
                while not self._slots.acquire(timeout=_POLL_S):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                try:
                    item = next(self._items)
                except StopIteration:
                    self._ordered.put(_END)
                    return
                job = _Job(item)
                self._ordered.put(job)
                self._work.put(job)
        except BaseException as err:  # reported by the consumer, with the source's name
            self._ordered.put(_SourceFailed(err))
        finally:
            for _ in self._threads[1:]:
                self._work.put(None)

    def _run_jobs(self) -> None:
        while (job := self._work.get()) is not None:
            if not self._stop.is_set():
                try:
                    job.value = self._prepare(job.item)
                except BaseException as err:  # handed to the consumer with its input
                    job.error = err
            job.done.set()


def prepare_inline(items: Iterable[T], prepare: Callable[[T], R]) -> Iterator[Prepared[T, R]]:
    """``Prefetcher``'s output computed one input at a time in the calling thread: the serial
    path, for comparison and debugging."""
    for item in items:
        try:
            yield Prepared(item, prepare(item))
        except Exception as err:  # as the Prefetcher hands it out; Ctrl-C still stops
            yield Prepared(item, error=err)


class OrderedSink(Generic[T]):
    """Runs ``step(item)`` on every ``put`` item in ``put`` order, in one writer thread
    (``threaded``) or directly in the caller's thread.

    The writer's queue holds at most ``depth`` items: ``put`` waits while the writer is that
    far behind. An exception of ``step`` in the writer is raised in the caller's thread by the
    next ``put`` or by ``close`` as ``PipelineError`` naming the item (``name(item)``); the
    items after it are dropped. Inline, ``step``'s exceptions propagate as they are.

    Use it as a context manager: a normal exit writes every queued item and joins the writer;
    an exit through an exception (or Ctrl-C) lets the writer finish its current item, drops
    the rest and joins it.
    """

    def __init__(
        self,
        step: Callable[[T], None],
        *,
        depth: int,
        threaded: bool,
        name: Callable[[T], str] = str,
    ) -> None:
        if threaded and depth < 1:
            raise InputError(f"OrderedSink needs depth >= 1, got {depth}")
        self._step = step
        self._name = name
        self._threaded = threaded
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._abort = threading.Event()
        self._failure: tuple[T, BaseException] | None = None
        self._thread = threading.Thread(target=self._write, name="output-writer", daemon=True)
        if threaded:
            self._thread.start()

    def __enter__(self) -> OrderedSink[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(drain=exc_type is None)

    def put(self, item: T) -> None:
        """Hands ``item`` to the output step (runs it now when not threaded)."""
        if not self._threaded:
            self._step(item)
            return
        while True:
            self._raise_failure()
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def close(self, *, drain: bool = True) -> None:
        """Writes the queued items (``drain``) or drops them, joins the writer, and raises a
        failure of the writer (only when draining, so that it never hides the exception that
        is ending the run)."""
        if not self._threaded or not self._thread.is_alive():
            if drain:
                self._raise_failure()
            return
        if not drain:
            self._abort.set()
        self._queue.put(_END)  # the writer keeps taking items, so this cannot block for long
        self._thread.join()
        if drain:
            self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            item, err = self._failure
            self._failure = None  # raised once
            raise PipelineError.wrap(self._name(item), err)

    def _write(self) -> None:
        while (item := self._queue.get()) is not _END:
            if self._abort.is_set():
                continue
            try:
                self._step(item)
            except BaseException as err:  # raised in the caller's thread by put or close
                self._failure = (item, err)
                self._abort.set()  # keep taking items so that put never waits forever
