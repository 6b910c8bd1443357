"""Ingest: exact numbers on a hand-made corpus, fingerprint, and every fault kind."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tr111.errors import EmptyCorpusError
from tr111.ingest.corpus import DataSummary, fingerprint_corpus, ingest_corpus

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CORPUS = REPO_ROOT / "corpus" / "sample"

RUNS_CSV = (
    "model,run,tokens_per_second,ttft_ms,note\n"
    "gemma3,1,100.0,500,warm\n"
    "gemma3,2,110.0,700,warm\n"
    "gemma3,3,120.0,,cold\n"  # blank cell: skipped, not zero
)
RUN_JSON = {
    "config": {"model": "gemma3", "num_ctx": 256, "temperature": 0.6, "stream": True},
    "metrics": {"tokens_per_second": 130.0, "ttft_ms": 900},
    "llm_calls": [{"stage": "analysis", "metrics": {"eval_count": 10}},
                  {"stage": "report", "metrics": {"eval_count": 30}}],
}
REPORT_MD = """# Report

Some prose with a number 42 that is not a field.

## Results

| run | tokens_per_second | ttft_ms |
|---|---:|---:|
| 1 | 140.0 | 1100 |

- **num_ctx**: 1024
mean_latency_ms: 12.5 ms
Date: 2025-11-14
"""


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    write(root / "runs.csv", RUNS_CSV)
    write(root / "nested" / "run.json", json.dumps(RUN_JSON, indent=2))
    write(root / "nested" / "deeper" / "report.md", REPORT_MD)
    write(root / "notes.txt", "tokens_per_second,1\n999,999\n")  # other extension: ignored
    write(root / ".git" / "hidden.csv", "tokens_per_second\n999\n")  # hidden dir: skipped
    return root


def kinds(summary: DataSummary) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for problem in summary.problems:
        found.setdefault(problem.kind, []).append(problem.path)
    return found


def test_numbers_and_counts_are_exact(corpus: Path) -> None:
    summary = ingest_corpus(corpus)
    assert summary.files_by_type == {"csv": 1, "json": 1, "md": 1}
    assert summary.total_files == 3 and summary.files_parsed == 3
    assert summary.total_bytes == sum(p.stat().st_size for p in corpus.rglob("*")
                                      if p.suffix in (".csv", ".json", ".md") and ".git" not in p.parts)
    assert (summary.csv_rows, summary.json_records) == (3, 1)
    assert (summary.markdown_headings, summary.markdown_tables) == (2, 1)
    assert summary.problems == []

    tps = summary.fields["tokens_per_second"]  # 100, 110, 120 (CSV) + 130 (JSON) + 140 (MD table)
    assert (tps.count, tps.mean, tps.min, tps.max) == (5, 120.0, 100.0, 140.0)
    ttft = summary.fields["ttft_ms"]  # 500, 700 (CSV, blank skipped) + 900 (JSON) + 1100 (MD)
    assert (ttft.count, ttft.mean, ttft.min, ttft.max) == (4, 800.0, 500.0, 1100.0)
    eval_count = summary.fields["eval_count"]  # nested list of records, filed by leaf name
    assert (eval_count.count, eval_count.mean, eval_count.min, eval_count.max) == (2, 20.0, 10.0, 30.0)
    num_ctx = summary.fields["num_ctx"]  # 256 (JSON) + 1024 (Markdown "key: value")
    assert (num_ctx.count, num_ctx.mean) == (2, 640.0)
    assert summary.fields["mean_latency_ms"].mean == 12.5
    assert summary.fields["run"].count == 4
    assert "model" not in summary.fields and "note" not in summary.fields  # text columns
    assert "stream" not in summary.fields  # booleans are not numbers
    assert "Date" not in summary.fields  # "2025-11-14" is not a number


def test_summary_serialises_and_renders(corpus: Path) -> None:
    summary = ingest_corpus(corpus)
    as_dict = json.loads(json.dumps(summary.to_dict()))
    assert as_dict["fields"]["ttft_ms"]["mean"] == 800.0
    assert as_dict["fingerprint"] == summary.fingerprint
    text = summary.to_prompt_text()
    assert "tokens_per_second: n=5 mean=120 min=100 max=140" in text
    assert "3 parsed" in text
    short = summary.to_prompt_text(max_fields=2)
    assert "(2 of " in short and "temperature" not in short


def test_ingest_is_deterministic(corpus: Path) -> None:
    assert ingest_corpus(corpus).to_dict() == ingest_corpus(corpus).to_dict()


def test_fingerprint_stable_and_sensitive(corpus: Path) -> None:
    first = fingerprint_corpus(corpus)
    assert first == fingerprint_corpus(corpus) == ingest_corpus(corpus).fingerprint
    (corpus / "notes.txt").write_text("ignored files do not count")
    assert fingerprint_corpus(corpus) == first

    csv_path = corpus / "runs.csv"
    stat = csv_path.stat()
    os.utime(csv_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))  # mtime only
    after_touch = fingerprint_corpus(corpus)
    assert after_touch != first

    csv_path.write_text(RUNS_CSV + "gemma3,4,1.0,1,warm\n")  # size (and mtime)
    after_edit = fingerprint_corpus(corpus)
    assert after_edit not in (first, after_touch)
    assert ingest_corpus(corpus).fingerprint == after_edit


def test_invalid_json_is_reported_and_skipped(corpus: Path) -> None:
    write(corpus / "broken.json", '{"tokens_per_second": 1.0,')
    summary = ingest_corpus(corpus)
    assert kinds(summary) == {"invalid_json": ["broken.json"]}
    assert summary.total_files == 4 and summary.files_parsed == 3
    assert "Ingest problems: 1 (invalid_json 1), e.g. broken.json: invalid_json." in summary.to_prompt_text()
    assert summary.fields["tokens_per_second"].count == 5


def test_ragged_csv_reported_once_and_good_rows_kept(tmp_path: Path) -> None:
    write(tmp_path / "ragged.csv", "a,b\n1,2\n3\n4,5,6\n7,8\n")
    summary = ingest_corpus(tmp_path)
    assert kinds(summary) == {"ragged_csv": ["ragged.csv"]}
    assert "2 row(s)" in summary.problems[0].detail and "data row 2" in summary.problems[0].detail
    assert summary.csv_rows == 2
    assert (summary.fields["a"].count, summary.fields["a"].mean) == (2, 4.0)
    assert summary.fields["b"].max == 8.0


def test_binary_file_named_csv_is_skipped(corpus: Path) -> None:
    write(corpus / "image.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    summary = ingest_corpus(corpus)
    assert kinds(summary) == {"binary": ["image.csv"]}
    assert summary.files_by_type["csv"] == 2 and summary.files_parsed == 3


def test_non_utf8_text_is_decoded_with_replacement(tmp_path: Path) -> None:
    write(tmp_path / "latin1.csv", "caf\xe9,ttft_ms\nx\xe9,250\ny,350\n".encode("latin-1"))
    write(tmp_path / "latin1.json", '{"name": "caf\xe9", "ttft_ms": 450}'.encode("latin-1"))
    summary = ingest_corpus(tmp_path)
    assert kinds(summary) == {"non_utf8": ["latin1.csv", "latin1.json"]}
    assert (summary.fields["ttft_ms"].count, summary.fields["ttft_ms"].mean) == (3, 350.0)


def test_bom_and_crlf_are_tolerated(tmp_path: Path) -> None:
    write(tmp_path / "excel.csv", "\ufeffttft_ms,tokens_per_second\r\n100,50\r\n300,70\r\n".encode("utf-8"))
    write(tmp_path / "bom.json", "\ufeff" + '{"ttft_ms": 200}')
    summary = ingest_corpus(tmp_path)
    assert summary.problems == []
    assert (summary.fields["ttft_ms"].count, summary.fields["ttft_ms"].mean) == (3, 200.0)


def test_oversized_file_parses_only_the_capped_prefix(tmp_path: Path) -> None:
    row = "gemma3,100.0,500\n"
    rows = 3 * 1024 * 1024 // len(row)  # about 3 MB
    write(tmp_path / "big.csv", "model,tokens_per_second,ttft_ms\n" + row * rows)
    write(tmp_path / "small.json", '{"ttft_ms": 700}')
    cap = 1024 * 1024
    summary = ingest_corpus(tmp_path, max_file_bytes=cap)
    assert kinds(summary) == {"too_large": ["big.csv"]}
    parsed_rows = summary.csv_rows
    assert 0 < parsed_rows < rows and parsed_rows == (cap - 32) // len(row)  # whole lines only
    assert summary.fields["tokens_per_second"].count == parsed_rows
    assert summary.fields["ttft_ms"].count == parsed_rows + 1
    assert summary.total_bytes == (tmp_path / "big.csv").stat().st_size + (tmp_path / "small.json").stat().st_size


@pytest.mark.slow
def test_200_mb_file_is_capped_quickly(tmp_path: Path) -> None:
    """A sparse 200 MB CSV: only the first 16 MiB (real text) may be read and parsed."""
    import tracemalloc

    path = tmp_path / "huge.csv"
    row = b"gemma3,114.5,650.25\n"
    with path.open("wb") as handle:
        handle.write(b"model,tokens_per_second,ttft_ms\n")
        handle.write(row * (17 * 1024 * 1024 // len(row)))  # text past the 16 MiB cap
        handle.truncate(200 * 1024 * 1024)  # the rest is a hole of NULs
    def bytes_read() -> int:  # read() syscalls of this process (Linux), whatever the clock says
        io = Path("/proc/self/io").read_text()
        return int(next(line.split()[1] for line in io.splitlines() if line.startswith("rchar:")))

    tracemalloc.start()
    before = bytes_read()
    summary = ingest_corpus(tmp_path, workers=1)  # in this process, so its reads are counted here
    read = bytes_read() - before
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert kinds(summary) == {"too_large": ["huge.csv"]}
    assert summary.total_bytes == 200 * 1024 * 1024
    assert summary.fields["ttft_ms"].count == (16 * 1024 * 1024 - 32) // len(row)
    # quick because capped: ~16 MiB read of 200 MiB (a timed assertion would only measure the load)
    assert read < 24 * 1024 * 1024, f"read {read / 2**20:.0f} MiB of a 200 MiB file capped at 16 MiB"
    assert peak < 120 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB for a 16 MiB prefix"


def test_unreadable_file_is_reported(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as root, where chmod 000 does not stop reads: make open() fail instead."""
    secret = write(corpus / "secret.json", '{"ttft_ms": 1}')
    real_open = os.open

    def denying_open(path, flags, *args, **kwargs):
        if os.fspath(path) == str(secret):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", denying_open)
    summary = ingest_corpus(corpus, workers=1)
    assert kinds(summary) == {"unreadable": ["secret.json"]}
    assert "Permission denied" in summary.problems[0].detail
    assert summary.files_by_type["json"] == 2 and summary.files_parsed == 3
    assert summary.fingerprint == fingerprint_corpus(corpus)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read mode 000 files")
def test_chmod_000_file_is_reported(corpus: Path) -> None:
    locked = write(corpus / "locked.csv", "a\n1\n")
    locked.chmod(0)
    try:
        assert kinds(ingest_corpus(corpus)) == {"unreadable": ["locked.csv"]}
    finally:
        locked.chmod(0o644)


def test_unlistable_directory_is_reported(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_scandir = os.scandir
    blocked = str(corpus / "nested" / "deeper")

    def denying_scandir(path="."):
        if os.fspath(path) == blocked:
            raise PermissionError(13, "Permission denied", blocked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", denying_scandir)
    summary = ingest_corpus(corpus, workers=1)
    assert kinds(summary) == {"unreadable": ["nested/deeper"]}
    assert summary.files_by_type == {"csv": 1, "json": 1, "md": 0}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_named_csv_does_not_block(corpus: Path) -> None:
    os.mkfifo(corpus / "pipe.csv")
    summary = ingest_corpus(corpus)
    assert kinds(summary) == {"unreadable": ["pipe.csv"]}
    assert "not a regular file" in summary.problems[0].detail
    assert summary.total_files == 3


def test_symlinks_are_not_followed(corpus: Path) -> None:
    (corpus / "nested" / "loop").symlink_to("..", target_is_directory=True)  # points at its parent
    (corpus / "self.json").symlink_to("self.json")  # loops on itself
    (corpus / "alias.csv").symlink_to("runs.csv")
    (corpus / "gone.md").symlink_to("missing.md")
    summary = ingest_corpus(corpus)
    assert kinds(summary) == {"symlink_loop": ["self.json", "nested/loop"],  # a directory's files first
                              "symlink_skipped": ["alias.csv", "gone.md"]}
    assert summary.files_by_type == {"csv": 1, "json": 1, "md": 1}
    assert summary.fingerprint == fingerprint_corpus(corpus)


def test_empty_file_is_reported(corpus: Path) -> None:
    write(corpus / "empty.csv", "")
    write(corpus / "blank.md", "\n  \n")
    summary = ingest_corpus(corpus)
    assert kinds(summary) == {"empty_file": ["blank.md", "empty.csv"]}


def test_nan_and_infinity_never_reach_the_statistics(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", "ttft_ms\n100\nnan\ninf\n300\n")
    write(tmp_path / "b.json", '[{"ttft_ms": NaN}, {"ttft_ms": Infinity}, {"ttft_ms": 200}]')
    summary = ingest_corpus(tmp_path)
    assert summary.problems == [] and summary.json_records == 3
    assert (summary.fields["ttft_ms"].count, summary.fields["ttft_ms"].mean) == (3, 200.0)


def test_quoted_csv_and_padded_cells(tmp_path: Path) -> None:
    write(tmp_path / "q.csv", 'model,tokens_per_second,tag\n"llama, 8b", 10.5 ,"a,b"\n"x",+1.5,c\n')
    summary = ingest_corpus(tmp_path)
    assert summary.problems == [] and summary.csv_rows == 2
    assert (summary.fields["tokens_per_second"].count, summary.fields["tokens_per_second"].mean) == (2, 6.0)
    assert "tag" not in summary.fields and "model" not in summary.fields


def test_deeply_nested_input_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """orjson 3.8 overflows the C stack near 200k levels; such input must not reach it."""
    write(tmp_path / "deep.json", "[" * 200_000 + "]" * 200_000)
    write(tmp_path / "nested.json", '{"a":' * 700 + "1" + "}" * 700)  # deep but legal: stdlib json
    write(tmp_path / "cell.csv", "ttft_ms\n5\n" + "[" * 200_000 + "]" * 200_000 + "\n")
    summary = ingest_corpus(tmp_path)
    assert kinds(summary) == {"parse_error": ["deep.json"]}
    assert "RecursionError" in summary.problems[0].detail
    assert summary.fields["a"].count == 1 and summary.fields["ttft_ms"].count == 1


@pytest.mark.parametrize("setup", ["empty", "only_other_files", "missing"])
def test_empty_corpus_raises(tmp_path: Path, setup: str) -> None:
    root = tmp_path / "corpus"
    if setup != "missing":
        root.mkdir()
    if setup == "only_other_files":
        write(root / "readme.txt", "nothing to ingest")
        (root / "link.csv").symlink_to(root / "readme.txt")
    with pytest.raises(EmptyCorpusError, match=str(root)) as raised:
        ingest_corpus(root)
    message = str(raised.value)
    assert ("does not exist" in message) if setup == "missing" else ("no CSV, JSON or Markdown files" in message)
    if setup == "missing":
        with pytest.raises(EmptyCorpusError):
            fingerprint_corpus(root)


def _generate(out: Path, files: int, seed: int = 111) -> None:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        from generate_corpus import generate
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))
    generate(out, files, seed)


@pytest.mark.skipif(sys.platform != "linux", reason="worker processes are forked on Linux only")
def test_worker_processes_give_the_same_summary(tmp_path: Path) -> None:
    _generate(tmp_path / "gen", 700)
    write(tmp_path / "gen" / "zz" / "broken.json", "{")
    serial = ingest_corpus(tmp_path / "gen", workers=1)
    parallel = ingest_corpus(tmp_path / "gen", workers=2)
    assert parallel.to_dict() == serial.to_dict()
    assert kinds(serial) == {"invalid_json": ["zz/broken.json"]}


def test_sample_corpus_ingests_cleanly() -> None:
    summary = ingest_corpus(SAMPLE_CORPUS)
    assert summary.problems == []
    assert summary.files_by_type == {"csv": 40, "json": 40, "md": 20}
    for name in ("tokens_per_second", "ttft_ms", "load_duration_ms", "eval_count"):
        assert summary.fields[name].count > 100
    assert 100 < summary.fields["tokens_per_second"].mean < 130
    assert summary.total_bytes < 1024 * 1024


def test_sample_corpus_matches_its_generator(tmp_path: Path) -> None:
    """The shipped files are exactly what the documented command produces."""
    _generate(tmp_path / "sample", 100, seed=111)
    shipped = {p.relative_to(SAMPLE_CORPUS): p.read_bytes() for p in SAMPLE_CORPUS.rglob("*")
               if p.is_file() and p.suffix != ".txt"}
    fresh = {p.relative_to(tmp_path / "sample"): p.read_bytes() for p in (tmp_path / "sample").rglob("*")
             if p.is_file() and p.suffix != ".txt"}
    assert shipped == fresh
    assert "SYNTHETIC" in (SAMPLE_CORPUS / "SAMPLE_DATA.txt").read_text()


def test_pool_failure_falls_back_to_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tr111.ingest.corpus as ingest_module

    _generate(tmp_path / "gen", 300)
    expected = ingest_corpus(tmp_path / "gen", workers=1).to_dict()

    def no_pool(*_args, **_kwargs):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(ingest_module, "ProcessPoolExecutor", no_pool)
    assert ingest_corpus(tmp_path / "gen", workers=3).to_dict() == expected


_TEST_PROCESS = os.getpid()


def _chunk_that_kills_workers(entries, max_file_bytes):
    """Stands in for ingest_chunk: a forked worker dies, the parent does the work."""
    from tr111.ingest.files import ingest_chunk

    if os.getpid() != _TEST_PROCESS:
        os._exit(1)
    return ingest_chunk(entries, max_file_bytes)


@pytest.mark.skipif(sys.platform != "linux", reason="worker processes are forked on Linux only")
def test_broken_worker_pool_falls_back_to_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tr111.ingest.corpus as ingest_module

    _generate(tmp_path / "gen", 600)
    expected = ingest_corpus(tmp_path / "gen", workers=1).to_dict()
    monkeypatch.setattr(ingest_module, "ingest_chunk", _chunk_that_kills_workers)
    assert ingest_corpus(tmp_path / "gen", workers=2).to_dict() == expected


def test_numeric_column_with_null_and_bool_cells_does_not_abort_ingest(tmp_path):
    """A null/true cell after numeric cells is skipped, never counted (true is not 1)."""
    (tmp_path / "mixed.csv").write_text("a,b\n1,2\nnull,true\n3,4\n")
    summary = ingest_corpus(tmp_path)
    assert summary.fields["a"].count == 2 and summary.fields["a"].mean == 2.0
    assert summary.fields["b"].count == 2 and summary.fields["b"].mean == 3.0
