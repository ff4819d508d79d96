"""`rounds serve`: the console in a real headless Chromium — the page loads with the token, the
console draws Home, enter opens a running session's Monitor — and a request without the token is
refused. Screenshots go to tests/artifacts/ (the test's artefacts)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, wait_for
from engine.session import SessionWriter

ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running_session(root: Path, name: str) -> Path:
    w = SessionWriter.create(root, "train", name=name, stage="dpo")
    w.set_status("running")  # this test's own pid: alive while it runs
    for step in range(1, 6):
        w.event("metrics", step=step, max_steps=50, loss=0.69 - step * 0.01, **{"rewards/margins": step * 0.02})
    w.close()
    return w.path


def start_serve(root: Path, port: int, transcript: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "ROUNDS_SERVE_TRANSCRIPT": str(transcript), "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "console.cli", "--sessions", str(root), "serve", "--port", str(port),
                          *extra], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    lines = []
    while True:  # the address with its token is printed before it serves
        line = p.stdout.readline()
        assert line, "".join(lines)
        lines.append(line)
        if "?token=" in line:  # printed just before it listens: wait until it does
            wait_for(lambda: _listening(port), timeout=120, what="the server to listen")
            return p, line.strip()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def served(transcript: Path) -> str:
    return transcript.read_bytes().decode("utf-8", "replace") if transcript.exists() else ""


class Browser:
    """A headless Chromium driven over the DevTools protocol (aiohttp's websocket client)."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                                      "--no-first-run", f"--remote-debugging-port={self.port}",
                                      f"--user-data-dir={tmp / 'chromium'}", "--window-size=1200,720", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.n = 0

    def target(self) -> str:
        def page():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
            except OSError:
                return None
            return pages[0]["webSocketDebuggerUrl"] if pages else None

        return wait_for(page, timeout=120, what="Chromium's DevTools")

    async def open(self):
        import aiohttp

        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.target(), max_msg_size=0)

    async def call(self, method: str, **params) -> dict:
        self.n += 1
        await self.ws.send_json({"id": self.n, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=120)
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg.get("result", {})

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    async def key(self, key: str, code: int, text: str = "") -> None:
        # as a person's click would: the terminal's input takes the keys
        await self.call("Runtime.evaluate", expression="document.querySelector('.xterm-helper-textarea').focus()")
        for kind in ("keyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code,
                            **({"text": text} if kind == "keyDown" and text else {}))

    async def close(self):
        await self.ws.close()
        await self.session.close()
        self.proc.terminate()
        self.proc.wait(timeout=60)


async def until(predicate, what: str, timeout: float = 180):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_real_browser_shows_home_and_a_running_sessions_monitor(tmp_path):
    if CHROMIUM is None:  # .ci/run installs Debian's chromium: there, its absence is a failure, not a skip
        if os.environ.get("CI"):
            pytest.fail("no Chromium: .ci/run installs it (apt-get install chromium)")
        pytest.skip("needs a Chromium: apt-get install chromium")
    root = tmp_path / "sessions"
    s = running_session(root, "night-dpo")
    transcript = tmp_path / "served.bin"
    server, url = start_serve(root, free_port(), transcript)
    browser = Browser(tmp_path)
    try:
        assert get(url.split("?")[0]) == 403  # without the token: refused

        async def drive():
            await browser.open()
            await browser.call("Page.enable")
            await browser.call("Page.navigate", url=url)
            await until(lambda: f"sessions in {root}" in served(transcript), "Home drawn in the page")
            await browser.screenshot(ARTIFACTS / "serve-home.png")
            await browser.key("Enter", 13, "\r")  # the newest session: the running one
            await until(lambda: "step 5/50" in served(transcript), "its Monitor drawn in the page")
            await browser.screenshot(ARTIFACTS / "serve-monitor.png")
            await browser.key("c", 67, "c")  # read-only: a checkpoint request is refused (it writes at once)
            await until(lambda: "read-only: served by `rounds serve`" in served(transcript), "the refusal")
            await browser.key("s", 83, "s")
            await browser.key("y", 89, "y")
            await browser.close()

        asyncio.run(drive())
    finally:
        if browser.proc.poll() is None:
            browser.proc.kill()
        server.terminate()
        server.wait(timeout=60)
    assert not (s / "requests").exists() or not any((s / "requests").iterdir())  # nothing asked of the run
    for name in ("serve-home.png", "serve-monitor.png"):
        assert (ARTIFACTS / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (ARTIFACTS / name).stat().st_size > 5000


def test_without_the_token_everything_but_the_static_files_is_refused(tmp_path):
    port = free_port()
    server, url = start_serve(tmp_path / "sessions", port, tmp_path / "t.bin")
    try:
        base = f"http://127.0.0.1:{port}"
        assert url.startswith(f"{base}/?token=") and len(url.split("token=")[1]) >= 24
        assert get(f"{base}/") == 403 and get(f"{base}/?token=wrong") == 403 and get(f"{base}/ws") == 403
        assert get(url) == 200
        assert get(f"{base}/static/js/textual.js") == 200  # the page's script: nothing of the user's
        token = url.split("token=")[1]
        other = urllib.request.Request(f"{base}/ws?token={token}", headers={"Origin": "http://127.0.0.1:9999"})
        try:
            urllib.request.urlopen(other, timeout=60)
            status = 200
        except urllib.error.HTTPError as e:
            status = e.code
        assert status == 403  # another port's page on this host, even holding the cookie or token
        page = urllib.request.urlopen(urllib.request.Request(url, headers={"Host": f"localhost:{port}"}), timeout=60)
        assert f"ws://localhost:{port}/ws" in page.read().decode()  # the address the browser used
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_serve_refuses_a_bad_port_and_names_the_extra_when_textual_serve_is_missing(tmp_path):
    from conftest import run_rounds

    r = run_rounds("--sessions", str(tmp_path), "serve", "--port", "70000")
    assert r.returncode != 0 and "not a port" in r.stderr
    code = ("import sys\nsys.modules['textual_serve'] = None\nsys.modules['textual_serve.server'] = None\n"
            "from console.cli import main\n"
            f"sys.exit(main(['--sessions', {str(tmp_path)!r}, 'serve']))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "pip install 'rounds[serve]'" in r.stderr and "Traceback" not in r.stderr


def test_only_allow_control_lets_the_served_consoles_act(tmp_path, monkeypatch):
    from console.app import READ_ONLY_ENV
    from console.serve import make_server

    monkeypatch.delenv(READ_ONLY_ENV, raising=False)
    make_server(tmp_path, port=free_port())
    assert "--allow-control" in os.environ[READ_ONLY_ENV]  # what the served consoles inherit
    make_server(tmp_path, port=free_port(), allow_control=True)
    assert READ_ONLY_ENV not in os.environ


def test_a_port_in_use_is_a_clear_error(tmp_path):
    from conftest import run_rounds

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = run_rounds("--sessions", str(tmp_path), "serve", "--port", str(busy.getsockname()[1]))
    assert r.returncode != 0 and "cannot listen on 127.0.0.1" in r.stderr and "--port 8001" in r.stderr, r.stderr
