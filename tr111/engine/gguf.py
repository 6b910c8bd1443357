"""Read a GGUF header (metadata and tensor shapes) without loading the model.

/api/tags and /api/show must describe a model that is not loaded, and loading
llama.cpp just to read metadata would cost seconds. Only the header is read.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_GGUF_MAGIC = b"GGUF"

# GGUF value type -> struct format of one scalar (strings and arrays handled apart).
_SCALAR_FORMATS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i",
    6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_TYPE_FLOAT32 = 6
_TYPE_STRING = 8
_TYPE_ARRAY = 9

# llama_ftype -> the name Ollama reports as quantization_level (fs/ggml/type.go).
_FILE_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
    15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS",
    20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
    25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M",
    30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
}


@dataclass(frozen=True)
class GGUFInfo:
    """What the API reports about a model file."""

    metadata: dict[str, Any]
    parameter_count: int
    array_keys: frozenset[str] = field(default_factory=frozenset)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def quantization_level(self) -> str:
        file_type = self.metadata.get("general.file_type")
        if file_type is None:
            return "unknown"
        return _FILE_TYPE_NAMES.get(int(file_type), "unknown")

    @property
    def parameter_size(self) -> str:
        return human_number(self.parameter_count)

    @property
    def context_length(self) -> int:
        return int(self.metadata.get(f"{self.architecture}.context_length", 0) or 0)

    def kv_cache_bytes(self, n_ctx: int) -> int:
        """Estimate of an f16 KV cache for ``n_ctx`` positions (for /api/ps ``size``)."""
        arch = self.architecture
        meta = self.metadata
        n_layer = int(meta.get(f"{arch}.block_count", 0) or 0)
        n_head = int(meta.get(f"{arch}.attention.head_count", 0) or 0)
        n_head_kv = meta.get(f"{arch}.attention.head_count_kv", n_head) or n_head
        if isinstance(n_head_kv, list):  # per-layer counts in some architectures
            n_head_kv = max(n_head_kv) if n_head_kv else n_head
        embedding = int(meta.get(f"{arch}.embedding_length", 0) or 0)
        head_dim = embedding // n_head if n_head else 0
        key_length = int(meta.get(f"{arch}.attention.key_length", head_dim) or head_dim)
        value_length = int(meta.get(f"{arch}.attention.value_length", head_dim) or head_dim)
        return 2 * n_layer * n_ctx * int(n_head_kv) * (key_length + value_length)

    def model_info(self) -> dict[str, Any]:
        """Ollama's ``model_info``: all keys, long arrays emptied (non-verbose /api/show)."""
        info = dict(self.metadata)
        for key in self.array_keys:
            info[key] = []
        info.setdefault("general.parameter_count", self.parameter_count)
        return info


def human_number(count: int) -> str:
    """Format like Ollama's format.HumanNumber: 268.10M, 7B, 1.5B."""
    for scale, suffix, decimals in ((1e9, "B", 1), (1e6, "M", 2)):
        if count >= scale:
            number = count / scale
            if number == int(number):
                return f"{int(number)}{suffix}"
            return f"{number:.{decimals}f}{suffix}"
    if count >= 1e3:
        return f"{count / 1e3:.0f}K"
    return str(count)


def _shortest_float32(value: float) -> float:
    """1e-06 rather than 9.999999974752427e-07, as Go prints a float32."""
    packed = struct.pack("<f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return value


class _Reader:
    """Cursor over the mapped file; arrays longer than a few items are skipped."""

    KEEP_ARRAY_MAX = 64

    def __init__(self, buffer: mmap.mmap) -> None:
        self.buffer = buffer
        self.offset = 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buffer, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.scalar("<Q")
        raw = self.buffer[self.offset : self.offset + length]
        self.offset += length
        return raw.decode("utf-8", errors="replace")

    def value(self, value_type: int) -> tuple[Any, bool]:
        """Return (value, was_long_array)."""
        if value_type == _TYPE_STRING:
            return self.string(), False
        if value_type == _TYPE_ARRAY:
            item_type = self.scalar("<I")
            count = self.scalar("<Q")
            if count > self.KEEP_ARRAY_MAX:
                self._skip_array(item_type, count)
                return [], True
            return [self.value(item_type)[0] for _ in range(count)], False
        value = self.scalar(_SCALAR_FORMATS[value_type])
        if value_type == _TYPE_FLOAT32:
            value = _shortest_float32(value)
        return value, False

    def _skip_array(self, item_type: int, count: int) -> None:
        if item_type in _SCALAR_FORMATS:
            self.offset += struct.calcsize(_SCALAR_FORMATS[item_type]) * count
            return
        for _ in range(count):
            self.value(item_type)


def read_gguf(path: str | Path) -> GGUFInfo:
    """Parse the header of ``path``; raises ValueError when it is not GGUF."""
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        if buffer[:4] != _GGUF_MAGIC:
            raise ValueError(f"{path} is not a GGUF file")
        reader = _Reader(buffer)
        reader.offset = 4
        version = reader.scalar("<I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        tensor_count = reader.scalar("<Q")
        kv_count = reader.scalar("<Q")
        metadata: dict[str, Any] = {}
        array_keys: set[str] = set()
        for _ in range(kv_count):
            key = reader.string()
            value, was_long_array = reader.value(reader.scalar("<I"))
            metadata[key] = value
            if was_long_array:
                array_keys.add(key)
        parameter_count = 0
        for _ in range(tensor_count):
            reader.string()  # tensor name
            n_dims = reader.scalar("<I")
            elements = 1
            for _ in range(n_dims):
                elements *= reader.scalar("<Q")
            reader.offset += 4 + 8  # ggml type, data offset
            parameter_count += elements
    return GGUFInfo(metadata=metadata, parameter_count=parameter_count, array_keys=frozenset(array_keys))
