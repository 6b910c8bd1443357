"""Which model is loaded, with which runner options, and until when.

Mirrors Ollama with OLLAMA_NUM_PARALLEL=1 and one loaded model: requests take
a FIFO turn, a request whose runner options differ from the loaded ones
reloads the model, and an idle model is unloaded when its keep_alive expires.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tr111.errors import ModelLoadError

from .limits import check_memory, required_bytes
from .models import ModelEntry
from .options import KEEP_ALIVE_FOREVER_NS, RunnerOptions

log = logging.getLogger(__name__)


class FifoLock:
    """A lock granted in arrival order, so queued requests are served like Ollama's queue."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._next_ticket = 0
        self._now_serving = 0

    def acquire(self) -> None:
        with self._condition:
            ticket = self._next_ticket
            self._next_ticket += 1
            while self._now_serving != ticket:
                self._condition.wait()

    def release(self) -> None:
        with self._condition:
            self._now_serving += 1
            self._condition.notify_all()

    def __enter__(self) -> FifoLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@dataclass
class LoadedModel:
    """A llama.cpp model in memory and what /api/ps reports about it."""

    entry: ModelEntry
    runner_options: RunnerOptions
    llm: Any  # llama_cpp.Llama, imported lazily to keep start-up fast
    size_bytes: int
    size_vram_bytes: int
    keep_alive_ns: int = 0
    expires_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    expires_monotonic_ns: int = 0
    busy: bool = False
    piece_cache: dict[int, tuple[bytes, bool]] = field(default_factory=dict, repr=False)
    max_piece_bytes: int = 0  # longest token text, measured on the first huge prompt

    @property
    def context_length(self) -> int:
        return self.runner_options.n_ctx


def _expiry(keep_alive_ns: int) -> tuple[datetime, int]:
    """Wall-clock and monotonic deadlines; 'forever' lands ~292 years out like Ollama's."""
    now_wall = datetime.now(UTC)
    now_mono = time.monotonic_ns()
    if keep_alive_ns >= KEEP_ALIVE_FOREVER_NS:
        return now_wall + timedelta(microseconds=KEEP_ALIVE_FOREVER_NS // 1000), KEEP_ALIVE_FOREVER_NS
    return now_wall + timedelta(microseconds=keep_alive_ns // 1000), now_mono + keep_alive_ns


def _load_llama(entry: ModelEntry, options: RunnerOptions) -> LoadedModel:
    """Create the llama_cpp.Llama for ``entry``; the first call also imports llama_cpp."""
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelLoadError("llama-cpp-python is not installed") from exc
    log.info("loading %s from %s with %s", entry.name, entry.path, options)
    try:
        llm = llama_cpp.Llama(
            model_path=str(entry.path),
            n_ctx=options.n_ctx,
            n_batch=options.n_batch,
            n_ubatch=options.n_batch,
            n_threads=options.n_threads,
            n_threads_batch=options.n_threads,
            n_gpu_layers=options.n_gpu_layers,
            use_mmap=options.use_mmap,
            use_mlock=options.use_mlock,
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"failed to load model {entry.name}: {exc}") from exc
    weights = int(llama_cpp.llama_model_size(llm.model))
    try:
        kv_cache = entry.info.kv_cache_bytes(options.n_ctx)
        n_layer = int(entry.info.metadata.get(f"{entry.info.architecture}.block_count", 0) or 0)
    except (OSError, ValueError):
        kv_cache, n_layer = 0, 0
    size = weights + kv_cache
    size_vram = 0
    if llama_cpp.llama_supports_gpu_offload() and options.n_gpu_layers != 0:
        offloaded = options.n_gpu_layers
        if offloaded < 0 or n_layer == 0 or offloaded > n_layer:
            size_vram = size
        else:
            size_vram = size * offloaded // n_layer
    return LoadedModel(entry=entry, runner_options=options, llm=llm,
                       size_bytes=size, size_vram_bytes=size_vram)


class Scheduler:
    """Owns the one loaded model; hands it out one request at a time."""

    def __init__(self, memory_limit_bytes: int | None = None) -> None:
        self._memory_limit_bytes = memory_limit_bytes  # None: MemAvailable at each load
        self._turn = FifoLock()
        self._state = threading.Condition()  # guards _loaded for /api/ps and the reaper
        self._loaded: LoadedModel | None = None
        self._closed = False
        self._reaper = threading.Thread(target=self._reap_expired, name="keep-alive-reaper", daemon=True)
        self._reaper.start()

    # -- views ---------------------------------------------------------------

    def running(self) -> list[LoadedModel]:
        """The loaded models, as /api/ps lists them."""
        with self._state:
            return [self._loaded] if self._loaded is not None else []

    # -- request life cycle --------------------------------------------------

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for this request's turn (one generation at a time)."""
        self._turn.acquire()
        try:
            yield
        finally:
            self._turn.release()

    def ensure_loaded(self, entry: ModelEntry, options: RunnerOptions, keep_alive_ns: int) -> tuple[LoadedModel, int]:
        """Return the model ready to run and the ns spent loading it (call inside ``turn``).

        A different model or different runner options unload the current one first.
        A load whose KV cache would not fit in memory raises InsufficientMemory
        and leaves the current model loaded.
        """
        start_ns = time.perf_counter_ns()
        with self._state:
            current = self._loaded
        changed = current is not None and (current.entry is not entry or current.runner_options != options)
        if current is None or changed:
            self._check_memory(entry, options, current)
        if changed:
            reason = "model" if current.entry is not entry else "runner options"
            log.info("reloading: %s changed (%s -> %s)", reason, current.runner_options, options)
            self._unload_current()
            current = None
        if current is None:
            current = _load_llama(entry, options)
            with self._state:
                self._loaded = current
        with self._state:
            current.busy = True
            current.keep_alive_ns = keep_alive_ns
            current.expires_at, current.expires_monotonic_ns = _expiry(keep_alive_ns)
        return current, time.perf_counter_ns() - start_ns

    def finish(self, loaded: LoadedModel, keep_alive_ns: int) -> LoadedModel | None:
        """Start the keep_alive countdown (call inside ``turn``).

        With keep_alive 0 the model leaves /api/ps at once and is returned:
        the caller frees it with ``release`` after sending the last chunk, so
        unloading does not delay the response.
        """
        with self._state:
            loaded.busy = False
        if keep_alive_ns == 0:
            return self.detach_for_unload()
        with self._state:
            loaded.keep_alive_ns = keep_alive_ns
            loaded.expires_at, loaded.expires_monotonic_ns = _expiry(keep_alive_ns)
            self._state.notify_all()
        return None

    def detach_for_unload(self) -> LoadedModel | None:
        """Hide the loaded model from /api/ps before its final response goes out."""
        with self._state:
            loaded, self._loaded = self._loaded, None
            return loaded

    def unload(self, entry: ModelEntry) -> None:
        """Unload ``entry`` if it is the loaded model (empty prompt with keep_alive 0)."""
        with self.turn():
            with self._state:
                current = self._loaded
            if current is not None and current.entry is entry:
                self._unload_current()

    def close(self) -> None:
        with self._state:
            self._closed = True
            self._state.notify_all()
        with self.turn():
            self._unload_current()

    # -- internals -----------------------------------------------------------

    def _check_memory(self, entry: ModelEntry, options: RunnerOptions, current: LoadedModel | None) -> None:
        try:
            info, file_size = entry.info, entry.size
            reclaimable = 0
            if current is not None:
                reclaimable = required_bytes(current.entry.info, current.runner_options.n_ctx,
                                             current.runner_options.use_mmap, current.entry.size)
        except (OSError, ValueError):  # an unreadable header fails at load with its own message
            return
        check_memory(info, options.n_ctx, options.use_mmap, file_size, self._memory_limit_bytes, reclaimable)

    def _unload_current(self) -> None:
        release(self.detach_for_unload())

    def _reap_expired(self) -> None:
        """Background thread: unload the idle model once its keep_alive has passed."""
        while True:
            with self._state:
                while not self._closed:
                    loaded = self._loaded
                    if loaded is None or loaded.busy:
                        self._state.wait()
                        continue
                    remaining_ns = loaded.expires_monotonic_ns - time.monotonic_ns()
                    if remaining_ns <= 0:
                        break
                    self._state.wait(timeout=min(remaining_ns / 1e9, 3600.0))
                if self._closed:
                    return
            with self.turn():
                with self._state:
                    loaded = self._loaded
                    expired = (loaded is not None and not loaded.busy
                               and loaded.expires_monotonic_ns <= time.monotonic_ns())
                if expired:
                    log.info("keep_alive expired, unloading %s", loaded.entry.name)
                    self._unload_current()


def release(loaded: LoadedModel | None) -> None:
    """Free llama.cpp memory now rather than at garbage collection."""
    if loaded is None:
        return
    log.info("unloading %s", loaded.entry.name)
    loaded.llm.close()
