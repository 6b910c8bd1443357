"""The token loop: prompt in, text pieces out, Ollama's counters at the end.

Counts and decode times come from llama.cpp's own performance counters
(``llama_perf_context``), read before the prompt is evaluated, after the first
token is sampled and at the end, so each phase is a difference of counters:

* prompt phase: ``prompt_eval_count`` = ``n_p_eval + n_eval`` tokens actually
  decoded (a prefix the KV cache already held is neither decoded nor counted),
  ``prompt_eval_duration`` = their ``t_p_eval_ms + t_eval_ms``;
* generation phase: ``eval_count`` = tokens sampled (llama-server's
  ``predicted_n``, which Ollama reports), ``eval_duration`` = llama.cpp's
  ``t_eval_ms`` for decoding them plus the time spent in the sampler.

The sampler is timed here because llama-cpp-python builds its sampler chain
with llama.cpp's perf counters off; with gemma3's 262k-token vocabulary it is
a few percent of each step, and Ollama's eval_duration includes it too. Our
own HTTP and JSON work stays outside every duration except total_duration.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tr111.errors import ClientGone

from .options import SamplingOptions
from .scheduler import LoadedModel

log = logging.getLogger(__name__)

_MS_TO_NS = 1_000_000
_PIECE_BUFFER_BYTES = 256


@dataclass
class GenerationResult:
    """What the final chunk reports."""

    done_reason: str
    prompt_eval_count: int
    prompt_eval_duration_ns: int
    eval_count: int
    eval_duration_ns: int
    context: list[int] = field(default_factory=list)


class StopMatcher:
    """Hold back text that may be the start of a stop sequence, as Ollama does."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to send, whether a stop sequence was reached)."""
        if not self._stops:
            return text, False
        buffer = self._held + text
        cut = min((index for index in (buffer.find(stop) for stop in self._stops) if index >= 0),
                  default=-1)
        if cut >= 0:
            self._held = ""
            return buffer[:cut], True
        keep = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(buffer)), keep, -1):
                if buffer.endswith(stop[:length]):
                    keep = length
                    break
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


def truncate_prompt(tokens: list[int], n_ctx: int, num_keep: int, adds_bos: bool) -> list[int]:
    """Ollama's rule: keep the first ``num_keep`` tokens (+BOS) and the tail.

    A prompt that fills the context is cut to about half of it plus num_keep,
    leaving room to generate (llm/llama_server.go, contextShiftPromptLimit).
    """
    limit_full = n_ctx - 1
    if len(tokens) <= limit_full:
        return tokens
    keep = len(tokens) if num_keep < 0 else num_keep
    if adds_bos:
        keep += 1
    keep = max(0, min(keep, limit_full))
    limit = n_ctx - max((n_ctx - keep) // 2, 1)
    discard = len(tokens) - limit
    truncated = tokens[:keep] + tokens[keep + discard:]
    log.warning("truncating input prompt limit=%d prompt=%d keep=%d new=%d",
                limit, len(tokens), keep, len(truncated))
    return truncated


def _perf(llama_cpp, llm) -> tuple[float, float, int, int]:
    """(t_p_eval_ms, t_eval_ms, n_p_eval, n_eval) with llama.cpp's clamp undone.

    llama.cpp reports a count of 0 as 1 (to avoid division by zero); a count
    whose time is still 0 ms was never incremented.
    """
    data = llama_cpp.llama_perf_context(llm.ctx)
    n_p_eval = data.n_p_eval if data.t_p_eval_ms > 0 else 0
    n_eval = data.n_eval if data.t_eval_ms > 0 else 0
    return data.t_p_eval_ms, data.t_eval_ms, n_p_eval, n_eval


class _Vocabulary:
    """Token -> (bytes, is end-of-generation), cached: the loop asks once per token."""

    def __init__(self, llama_cpp, loaded: LoadedModel) -> None:
        self._llama_cpp = llama_cpp
        self._vocab = loaded.llm._model.vocab
        self._cache = loaded.piece_cache
        self._buffer = ctypes.create_string_buffer(_PIECE_BUFFER_BYTES)

    def lookup(self, token: int) -> tuple[bytes, bool]:
        cached = self._cache.get(token)
        if cached is None:
            length = self._llama_cpp.llama_token_to_piece(
                self._vocab, token, self._buffer, _PIECE_BUFFER_BYTES, 0, False)
            piece = self._buffer.raw[: max(length, 0)]
            cached = (piece, bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token)))
            self._cache[token] = cached
        return cached


class SamplerClock:
    """Times llama-cpp-python's ``Llama.sample`` by shadowing it on the instance."""

    def __init__(self, llm) -> None:
        self._llm = llm
        self._sample = llm.sample
        self.total_ns = 0

    def __enter__(self) -> SamplerClock:
        def timed_sample(*args, **kwargs):
            started = time.perf_counter_ns()
            try:
                return self._sample(*args, **kwargs)
            finally:
                self.total_ns += time.perf_counter_ns() - started

        self._llm.sample = timed_sample
        return self

    def __exit__(self, *exc_info: object) -> None:
        del self._llm.sample  # back to the class method


_CUT_MARGIN_TOKENS = 16


def max_piece_bytes(loaded: LoadedModel) -> int:
    """The longest token text in bytes (a scan of the vocabulary, ~0.4 s, once per load)."""
    if not loaded.max_piece_bytes:
        import llama_cpp

        vocab = loaded.llm._model.vocab
        buffer = ctypes.create_string_buffer(_PIECE_BUFFER_BYTES)
        longest = 1
        for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
            length = llama_cpp.llama_token_to_piece(vocab, token, buffer, _PIECE_BUFFER_BYTES, 0, True)
            longest = max(longest, abs(length))
        loaded.max_piece_bytes = longest
    return loaded.max_piece_bytes


def tokenize(loaded: LoadedModel, prompt: str, num_keep: int) -> list[int]:
    """Prompt tokens as the model will see them, truncated to fit the context.

    A prompt far longer than the context is cut before tokenizing (tokenizing
    16 MB takes ~25 s): no token is longer than ``max_piece_bytes``, so a tail
    of (n_ctx + margin) x that many characters holds more tokens than the
    context, and truncate_prompt keeps only the head's num_keep tokens and the
    tail's last ones, exactly what it would keep from the whole prompt (up to
    how a token split by the cut would merge, and those are dropped anyway).
    """
    llm = loaded.llm
    n_ctx = loaded.runner_options.n_ctx
    if num_keep >= 0 and len(prompt) > 8 * (n_ctx + num_keep + 2 * _CUT_MARGIN_TOKENS):
        piece = max_piece_bytes(loaded)
        head_chars = (num_keep + 1 + _CUT_MARGIN_TOKENS) * piece
        tail_chars = (n_ctx + _CUT_MARGIN_TOKENS) * piece
        if head_chars + tail_chars < len(prompt):
            head = llm.tokenize(prompt[:head_chars].encode("utf-8"), add_bos=True, special=True)
            tail = llm.tokenize(prompt[-tail_chars:].encode("utf-8"), add_bos=False, special=True)
            adds_bos = bool(head) and head[0] == llm.token_bos()
            log.info("prompt of %d characters cut to its first %d and last %d before tokenizing",
                     len(prompt), head_chars, tail_chars)
            keep = num_keep + (1 if adds_bos else 0)
            return truncate_prompt(head[:keep] + tail, n_ctx, num_keep, adds_bos)
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    adds_bos = bool(tokens) and tokens[0] == llm.token_bos()
    return truncate_prompt(tokens, n_ctx, num_keep, adds_bos)


def generate(
    loaded: LoadedModel,
    prompt_tokens: list[int],
    sampling: SamplingOptions,
    on_text: Callable[[str], None],
) -> GenerationResult:
    """Run the token loop; ``on_text`` may raise ClientGone to stop it."""
    import llama_cpp

    llm = loaded.llm
    n_ctx = loaded.runner_options.n_ctx
    vocabulary = _Vocabulary(llama_cpp, loaded)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stops = StopMatcher(sampling.stop)
    num_predict = sampling.num_predict
    llm.set_seed(sampling.seed % 2**32 if sampling.seed >= 0 else llama_cpp.LLAMA_DEFAULT_SEED)
    llm.last_n_tokens_size = n_ctx if sampling.repeat_last_n < 0 else sampling.repeat_last_n

    tokens_out = llm.generate(
        prompt_tokens,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        min_p=sampling.min_p,
        typical_p=sampling.typical_p,
        temp=sampling.temperature,
        repeat_penalty=sampling.repeat_penalty,
        frequency_penalty=sampling.frequency_penalty,
        presence_penalty=sampling.presence_penalty,
        mirostat_mode=sampling.mirostat,
        mirostat_tau=sampling.mirostat_tau,
        mirostat_eta=sampling.mirostat_eta,
        reset=True,
    )
    generated: list[int] = []
    done_reason = "stop"
    hit_stop_sequence = False
    with SamplerClock(llm) as sampler_clock:
        perf_start = _perf(llama_cpp, llm)
        try:
            token = next(tokens_out)  # decodes the prompt, samples the first token
            perf_prompt = _perf(llama_cpp, llm)
            sampled_ns_prompt = sampler_clock.total_ns
            if num_predict == 0:
                done_reason = "length"
            while num_predict != 0:
                generated.append(token)
                piece, is_end = vocabulary.lookup(token)
                if is_end:
                    break
                text = decoder.decode(piece)
                if text:
                    text, hit_stop_sequence = stops.feed(text)
                    if text:
                        on_text(text)
                    if hit_stop_sequence:
                        break
                if 0 < num_predict <= len(generated) or llm.n_tokens >= n_ctx:
                    done_reason = "length"
                    break
                token = next(tokens_out)  # decodes the previous token, samples the next
            if not hit_stop_sequence:
                tail = stops.flush() + decoder.decode(b"", final=True)
                if tail:
                    on_text(tail)
        finally:
            tokens_out.close()
        perf_end = _perf(llama_cpp, llm)
        sampling_ns = sampler_clock.total_ns - sampled_ns_prompt
    decode_ms = (perf_end[0] - perf_prompt[0]) + (perf_end[1] - perf_prompt[1])
    return GenerationResult(
        done_reason=done_reason,
        prompt_eval_count=(perf_prompt[2] - perf_start[2]) + (perf_prompt[3] - perf_start[3]),
        prompt_eval_duration_ns=round(
            ((perf_prompt[0] - perf_start[0]) + (perf_prompt[1] - perf_start[1])) * _MS_TO_NS),
        eval_count=len(generated),
        eval_duration_ns=round(decode_ms * _MS_TO_NS) + sampling_ns,
        context=prompt_tokens + [token for token in generated if not vocabulary.lookup(token)[1]],
    )
