"""`rounds serve`: the same Textual console in a browser, for watching a night's runs from a
laptop or tablet over an SSH port-forward.

Built on textual-serve (the ``serve`` extra): each browser tab that connects runs its own
``rounds`` console process on this machine, drawn in the page by xterm.js. What `rounds` adds:

- bound to ``127.0.0.1`` by default (``--host`` to change it, with a warning): reach it with
  ``ssh -L 8000:127.0.0.1:8000 box`` and open the printed address on your side;
- a token made at every start: the page is served only to ``/?token=...``, which sets a
  same-site, HTTP-only cookie the page's websocket then carries; anything else gets 403;
- read-only unless ``--allow-control``: the served console cannot stop a run, ask for a
  checkpoint or write marks (it says so when a key would).

``ROUNDS_SERVE_TRANSCRIPT=FILE`` appends every byte the consoles send to browsers to FILE (for
debugging, and for the end-to-end test that drives a real Chromium).
"""

from __future__ import annotations

import hmac
import os
import secrets
import shlex
import socket
import sys
from pathlib import Path

from engine.errors import UserError

COOKIE = "rounds_token"  # + the port: two servers on one host keep their own
TRANSCRIPT_ENV = "ROUNDS_SERVE_TRANSCRIPT"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _textual_serve():
    try:
        from textual_serve.server import Server
    except ImportError:
        raise UserError("rounds serve needs the textual-serve package, which is not installed",
                        hint="pip install 'rounds[serve]'") from None
    return Server


def console_command(root: Path) -> str:
    """The command each browser connection runs: this Python's `rounds` console on ``root``
    (from this checkout, whatever the working directory)."""
    here = str(Path(__file__).resolve().parent.parent)
    return shlex.join(["env", f"PYTHONPATH={here}", sys.executable, "-m", "console.cli", "--sessions", str(root)])


def make_server(root: Path, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                allow_control: bool = False):
    """A textual-serve server for the console on ``root`` that admits only ``token`` holders."""
    from aiohttp import web

    from console.app import READ_ONLY_ENV

    Server = _textual_serve()
    token = token or secrets.token_urlsafe(24)
    os.environ.pop(READ_ONLY_ENV, None)
    if not allow_control:  # the child consoles inherit it
        os.environ[READ_ONLY_ENV] = "served by `rounds serve` (start it with --allow-control to stop runs, " \
                                    "ask for checkpoints or mark answers)"

    class RoundsServer(Server):
        def __init__(self) -> None:
            super().__init__(console_command(root), host=host, port=port, title="rounds")
            self.token = token

        cookie = f"{COOKIE}_{port}"

        def admitted(self, request) -> bool:
            given = request.query.get("token") or request.cookies.get(self.cookie) or ""
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return False
            # a page of another site or port on this host (SameSite ignores ports) may not drive the console
            origin = request.headers.get("Origin")
            return origin is None or origin == f"{request.scheme}://{request.host}"

        async def handle_index(self, request):
            # the page's websocket address is the one the browser used (a forwarded port, localhost,
            # a --host 0.0.0.0 server's real address), not the bind address
            self.public_url = f"{request.scheme}://{request.host}"
            return await super().handle_index(request)

        async def _make_app(self):
            app = await super()._make_app()

            @web.middleware
            async def check_token(request, handler):
                if request.path.startswith("/static/"):  # the page's scripts and styles: nothing of yours
                    return await handler(request)
                if not self.admitted(request):
                    return web.Response(status=403, text="rounds serve: this address needs the token printed when "
                                                         "`rounds serve` started (open the full address it printed)\n")
                response = await handler(request)
                if request.query.get("token") and isinstance(response, web.StreamResponse) \
                        and not response.prepared:
                    response.set_cookie(self.cookie, self.token, httponly=True, samesite="Strict")
                return response

            app.middlewares.append(check_token)
            return app

        async def handle_websocket(self, request):
            transcript = os.environ.get(TRANSCRIPT_ENV)
            if not transcript:
                return await super().handle_websocket(request)
            return await _with_transcript(super().handle_websocket, request, Path(transcript))

        async def on_startup(self, app) -> None:
            pass  # rounds prints its own lines (the address with its token), not textual-serve's logo

    return RoundsServer()


async def _with_transcript(handle, request, path: Path):
    """Run textual-serve's websocket handler with every byte sent to the browser also appended to ``path``."""
    from aiohttp import web

    original = web.WebSocketResponse.send_bytes

    async def send_bytes(self, data, *args, **kwargs):
        with open(path, "ab") as f:
            f.write(bytes(data))
        return await original(self, data, *args, **kwargs)

    web.WebSocketResponse.send_bytes = send_bytes
    try:
        return await handle(request)
    finally:
        web.WebSocketResponse.send_bytes = original


def serve(root: Path, host: str, port: int, allow_control: bool) -> int:
    try:  # a port in use is the user's to choose again, said before anything is printed as served
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}", field="--port",
                        hint="another program has it: choose another, e.g. --port 8001") from None
    server = make_server(root, host, port, allow_control=allow_control)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    mode = ("with control: stop, checkpoint and marks work" if allow_control
            else "read-only (--allow-control to stop runs, ask for checkpoints, mark answers)")
    lines = [f"rounds: serving the console on {root}, {mode}, at", f"  http://{shown}:{port}/?token={server.token}"]
    if host in LOOPBACK:
        lines.append(f"  from your laptop: ssh -L {port}:127.0.0.1:{port} THIS_HOST, then open that address there")
    else:
        lines.append(f"  warning: bound to {host}: anyone on its network with the address (token) can open it")
    lines.append("  Ctrl-C stops it")
    print("\n".join(lines), flush=True)
    server.serve()
    return 0
