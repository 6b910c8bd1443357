"""Start a Prefect server, run the quick sweep, screenshot the flow run's artifacts in headless Chromium.

    python scripts/screenshot_prefect_ui.py [--fake] [--nights 2] [--out-dir DIR]

What it does:

1. ``prefect server start`` on a free loopback port, with PREFECT_HOME in a
   temp folder (your own Prefect settings and database are not touched);
2. runs the ``tr111-sweep`` flow with sweeps/quick.yaml against that server
   (``--fake``: tr111's fake Ollama, seconds; otherwise the engine the CLI
   would pick: Ollama if one answers, else the embedded engine, minutes on a
   small CPU), ``--nights`` times so the later reports have a regression check;
3. takes headless-Chromium screenshots (Debian's ``chromium`` package) of the
   last sweep's flow run page (Artifacts tab) and of its report, aggregate
   table and regression artifacts; prints the PNG paths.

Until flows/sweep.py publishes the artifacts itself (tasks.artifacts:
start_progress / advance_progress / publish_report_artifacts), this script
does the same from outside: it follows tr111.progress events inside the flow
run and publishes the report artifacts onto the sweep's flow run afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {url}")


def start_server(home: Path, port: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api")
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no chromium: apt-get update && apt-get install -y chromium")


class Browser:
    """Headless Chromium driven over the DevTools protocol: navigate, wait for text, click, capture.

    (A bare ``--screenshot`` cannot click the flow run page's Artifacts tab, which
    the UI only shows once the run has loaded.)
    """

    def __init__(self, binary: str, width: int = 1600, height: int = 1400):
        self.port = free_port()
        self.profile = tempfile.TemporaryDirectory(prefix="tr111-chromium-", ignore_cleanup_errors=True)
        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile.name}",
             f"--remote-debugging-port={self.port}", "--remote-debugging-address=127.0.0.1",
             "--remote-allow-origins=*", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(f"http://127.0.0.1:{self.port}/json/version", 60)
        import json

        from websockets.sync.client import connect

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as resp:
            page = next(t for t in json.load(resp) if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.next_id = 0
        self.width = width

    def call(self, method: str, **params):
        import json

        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_text(self, text: str, timeout_s: float = 60) -> None:
        import json

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.js(f"document.body && document.body.innerText.includes({json.dumps(text)})"):
                return
            time.sleep(0.5)
        raise SystemExit(f"the page never showed {text!r}")

    def shot(self, url: str, target: Path, *, wait: str, click: str | None = None, then: str | None = None,
             height: int = 1400) -> Path:
        import base64
        import json

        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=height,
                  deviceScaleFactor=1, mobile=False)
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        self.wait_text(wait)
        if click:
            self.wait_text(click)
            self.js("[...document.querySelectorAll('button, a, [role=tab], li')]"
                    f".find(e => e.textContent.trim() === {json.dumps(click)})?.click()")
        if then:
            self.wait_text(then)
        time.sleep(2.0)  # let fonts and transitions settle
        data = self.call("Page.captureScreenshot", format="png")["data"]
        target.write_bytes(base64.b64decode(data))
        return target

    def close(self) -> None:
        """Stop Chromium and every helper process it forked, then remove the profile.

        Chromium's renderer and utility processes outlive the browser process
        for a moment and keep writing into the profile (``Default/``); removing it
        before the whole process group is gone fails with "Directory not empty".
        """
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            _stop_group(self.proc.pid)
            self.profile.cleanup()  # ignore_cleanup_errors: a leftover temp folder is no failure


def _stop_group(pgid: int) -> None:
    """SIGKILL whatever is left of the process group Chromium led (start_new_session=True)."""
    import signal

    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)


def run_sweeps(args, api_url: str, work: Path) -> dict:
    os.environ["PREFECT_API_URL"] = api_url  # before Prefect is imported
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    sys.path.insert(0, str(REPO))
    from contextlib import nullcontext

    import tr111.flows.sweep as sweep_module  # publishes the report, progress and regression artifacts

    fake = None
    if args.fake:
        from tr111.fake_ollama.server import FakeOllama, FakeTimings

        fake = FakeOllama(FakeTimings(load_ms=300, token_ms=4, tokens=40, jitter_ms=1.0))
    results = []
    with fake or nullcontext():
        for night in range(1, args.nights + 1):
            result = sweep_module.tr111_sweep(
                matrix=args.matrix, sweep_id=f"ui-{int(time.time())}-{night}",
                ollama_url=fake.url if fake else None, engine="ollama" if fake else None,
                warehouse=str(work / "wh.duckdb"), out=str(work / "reports"))
            results.append(result)
    return results[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fake", action="store_true", help="use tr111's fake Ollama (fast)")
    parser.add_argument("--nights", type=int, default=2, help="sweeps to run (>= 2: a regression check)")
    parser.add_argument("--matrix", default="quick", help="sweep matrix: a name under sweeps/ or a YAML path")
    parser.add_argument("--out-dir", type=Path, help="where the PNGs go (default: reports/ui-screenshots)")
    parser.add_argument("--keep", action="store_true", help="leave the Prefect server running")
    args = parser.parse_args()

    binary = chromium()
    work = Path(tempfile.mkdtemp(prefix="tr111-ui-"))
    port = free_port()
    server = start_server(work / "prefect-home", port, work / "prefect-server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/api/health", 180)
        result = run_sweeps(args, f"{base}/api", work)
        run_id = result.get("flow_run_id")
        if run_id is None:  # the sweep flow published them itself: find its run
            run_id = _latest_sweep_run_id()
        out_dir = args.out_dir or REPO / "reports" / "ui-screenshots"
        out_dir.mkdir(parents=True, exist_ok=True)
        ids = _artifact_ids(run_id)
        browser = Browser(binary)
        try:
            shots = [browser.shot(f"{base}/runs/flow-run/{run_id}", out_dir / "flow_run_artifacts.png",
                                  wait=result["sweep_id"], click="Artifacts", then="tr111-report")]
            for key, name, wait, height in (
                    ("tr111-report", "report_artifact.png", "Executive summary", 2400),
                    ("tr111-aggregate", "aggregate_artifact.png", "decode_tok_s", 1000),
                    ("tr111-regressions", "regressions_artifact.png", "Regression check", 1000)):
                if key in ids:
                    shots.append(browser.shot(f"{base}/artifacts/artifact/{ids[key]}", out_dir / name,
                                              wait=wait, height=height))
        finally:
            browser.close()
        print(f"sweep: {result['sweep_id']}  flow run: {base}/runs/flow-run/{run_id}")
        print(f"artifacts on the flow run: {', '.join(sorted(ids))}")
        for shot in shots:
            print(shot)
        return 0
    finally:
        if not args.keep:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()


def _artifact_ids(run_id: str) -> dict[str, str]:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))

    return {a.key: str(a.id) for a in asyncio.run(read()) if a.key}


def _latest_sweep_run_id() -> str:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    async def read():
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["tr111-sweep"])),
                                               sort=FlowRunSort.START_TIME_DESC, limit=1)
            return str(runs[0].id)

    return asyncio.run(read())


if __name__ == "__main__":
    sys.exit(main())
