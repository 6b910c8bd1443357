"""``python -m tr111.engine serve``: run the embedded Ollama-compatible server."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

from tr111.errors import ConfigError

from .limits import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_WRITE_TIMEOUT_S,
    IDLE_TIMEOUT_ENV,
    MAX_BODY_ENV,
    MEMORY_LIMIT_ENV,
    WRITE_TIMEOUT_ENV,
    EngineLimits,
)
from .models import DEFAULT_MODEL_NAME, ModelRegistry, packaged_gemma_digest, packaged_gemma_path, parse_model_spec
from .options import RunnerOptions, default_thread_count

log = logging.getLogger("tr111.engine")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tr111 engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the Ollama API on llama-cpp-python")
    serve.add_argument("--host", default=DEFAULT_HOST, help="bind address (default: loopback only)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--model", action="append", default=[], metavar="NAME=PATH.gguf",
                       help="serve a GGUF file under an Ollama name (repeatable); "
                            f"{DEFAULT_MODEL_NAME} comes from the bundled package unless given")
    serve.add_argument("--threads", type=int, default=None,
                       help="default llama.cpp threads (num_thread overrides per request; "
                            "default: all CPUs available to the process)")
    serve.add_argument("--write-timeout", type=float, default=None, metavar="SECONDS",
                       help="drop a client that accepts no bytes for this long and stop its generation "
                            f"(env {WRITE_TIMEOUT_ENV}; default {DEFAULT_WRITE_TIMEOUT_S:g})")
    serve.add_argument("--idle-timeout", type=float, default=None, metavar="SECONDS",
                       help="close a keep-alive connection that sends no request for this long "
                            f"(env {IDLE_TIMEOUT_ENV}; default {DEFAULT_IDLE_TIMEOUT_S:g})")
    serve.add_argument("--max-body-bytes", type=int, default=None, metavar="BYTES",
                       help="answer 413 to larger request bodies "
                            f"(env {MAX_BODY_ENV}; default {DEFAULT_MAX_BODY_BYTES})")
    serve.add_argument("--memory-limit-bytes", type=int, default=None, metavar="BYTES",
                       help="memory a KV cache may take; a larger num_ctx is refused with 500 "
                            f"(env {MEMORY_LIMIT_ENV}; default: MemAvailable)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument("--exit-with-parent", action="store_true",
                       help="exit when the launching process dies (used by EmbeddedEngine)")
    return parser


def build_registry(model_specs: list[str]) -> ModelRegistry:
    """Models from --model, plus the bundled gemma3:270m unless that name is taken."""
    registry = ModelRegistry()
    for spec in model_specs:
        name, path = parse_model_spec(spec)
        registry.add(name, path, known_digest=packaged_gemma_digest(path))
    if DEFAULT_MODEL_NAME not in registry:
        path, digest = packaged_gemma_path()
        registry.add(DEFAULT_MODEL_NAME, path, known_digest=digest)
    return registry


def _warm_up(registry: ModelRegistry) -> None:
    """Read GGUF headers and import llama_cpp off the request path."""
    for entry in registry.entries():
        try:
            entry.info  # noqa: B018 - cached on first access
        except (OSError, ValueError) as exc:
            log.warning("cannot read GGUF header of %s: %s", entry.path, exc)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        log.error("llama-cpp-python is not installed; generation will fail")


def _exit_when_orphaned(parent_pid: int) -> None:
    """A launcher that died without stopping us must not leave a server behind."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os.write(2, b"tr111 engine: parent process gone, exiting\n")
    os._exit(0)


def serve(host: str, port: int, model_specs: list[str], threads: int | None, exit_with_parent: bool = False,
          limits: EngineLimits | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then end the process (it does not return)."""
    from .server import EngineHTTPServer  # after argument parsing: keeps --help instant

    registry = build_registry(model_specs)
    runner_defaults = RunnerOptions(n_threads=threads or default_thread_count())
    limits = limits or EngineLimits.build()
    server = EngineHTTPServer((host, port), registry, runner_defaults, limits)
    bound_host, bound_port = server.server_address[:2]
    log.info("tr111 embedded engine listening on http://%s:%d (models: %s, threads: %d, %s)",
             bound_host, bound_port, ", ".join(e.name for e in registry.entries()),
             runner_defaults.n_threads, limits)
    threading.Thread(target=_warm_up, args=(registry,), name="warm-up", daemon=True).start()
    if exit_with_parent:
        threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), name="parent-watch", daemon=True).start()

    def stop(signum: int, _frame: object) -> None:
        # Exit at once: no waiting for an in-flight generation, no llama.cpp
        # finalizers under live threads. A stop must be quick (restart timing).
        os.write(2, f"tr111 engine: signal {signum}, exiting\n".encode())
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever(poll_interval=0.5)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``tr111 engine ...``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            limits = EngineLimits.build(write_timeout_s=args.write_timeout, idle_timeout_s=args.idle_timeout,
                                        max_body_bytes=args.max_body_bytes,
                                        memory_limit_bytes=args.memory_limit_bytes)
            return serve(args.host, args.port, args.model, args.threads, args.exit_with_parent, limits)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:  # e.g. address already in use
        log.error("cannot start server: %s", exc)
        return 1
    return 2
