"""`rounds` verbs. The console: the demo, Home and the Monitor."""

from __future__ import annotations

import argparse
import sys
import time

from console.cli.common import _session_path, _verb
from engine.errors import UserError


def add_verbs(sub) -> None:
    p = _verb(sub, "demo", "the whole loop on this CPU: builds a small model, trains it, opens the console",
              "rounds demo",
              "Builds the demo model (cached after the first time) and starts, in the background, a real SFT\n"
              "run on the bundled fictional-drug data followed by an evaluation of the trained model on a\n"
              "held-out test set; opens the console on the run's Monitor (esc: all sessions, where the\n"
              "evaluation appears when it is ready to assess; q leaves the console, the run goes on).\n"
              "--pipeline runs the whole loop: SFT, evaluation, the `abstain` judge on an assessment round,\n"
              "DPO pairs, DPO (full parameters, reference precomputed: see the README for why), evaluation\n"
              "of the DPO model, comparison; the console follows each run and ends on the comparison\n"
              "(--no-tui prints each stage's progress instead).")
    p.add_argument("--pipeline", action="store_true", help="run the whole SFT → DPO → compare loop")
    p.add_argument("--no-tui", action="store_true", help="print progress instead of opening the console")
    p.add_argument("--quick", action="store_true", help="a tiny model and one epoch: checks the plumbing in ~1 min")
    p.set_defaults(func=cmd_demo)

    p = _verb(sub, "watch", "open the Monitor on a run: progress, ETA, memory, GPU/CPU, loss and rewards, events",
              "rounds watch 20261128-021500-train-sft-demo",
              "Without SESSION: the latest running run, else the latest session. `q` leaves the console,\n"
              "never the run; `c` asks for a checkpoint, `s` stops the run gracefully (after a confirmation).")
    p.add_argument("session", metavar="SESSION", nargs="?")
    p.set_defaults(func=cmd_watch)

    p = _verb(sub, "serve", "the console in a browser (127.0.0.1, a token a start; read-only unless --allow-control)",
              "rounds serve --port 8000   (then on your laptop: ssh -L 8000:127.0.0.1:8000 box)",
              "Serves the same console to a browser with textual-serve (pip install 'rounds[serve]'): each tab\n"
              "runs its own console here. Bound to 127.0.0.1 (reach it over an SSH port-forward); the address\n"
              "it prints carries a token made at this start, and anything without it is refused (403). The\n"
              "served console only watches unless --allow-control (stop, checkpoint, marks).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others with a warning)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--allow-control", action="store_true",
                   help="let the browser stop runs, ask for checkpoints and mark answers")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from console.serve import serve
    from engine.session import sessions_root

    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: not a port", field="--port", hint="e.g. --port 8000")
    return serve(sessions_root(args.sessions), args.host, args.port, args.allow_control)


def cmd_demo(args: argparse.Namespace) -> int:
    from engine import demo
    from engine.session import list_sessions, sessions_root

    root = sessions_root(args.sessions)
    cfg = demo.DemoConfig.quick() if args.quick else demo.DemoConfig()
    running = demo.demo_lock(root).held_by_another() if root.is_dir() else None
    if running:  # one demo at a time in a sessions root: watch that one instead
        tui = not args.no_tui and sys.stdout.isatty()
        if not tui:
            raise UserError(running, hint=f"watch it with `rounds --sessions {root}`, or wait until it finishes")
        print(f"rounds demo: {running}; opening the console on it instead of starting another", flush=True)
        from console.app import run_console

        return run_console(root)
    t = time.perf_counter()
    print(f"rounds demo: preparing the {cfg.size} demo model (built once, then cached in {demo.cache_dir()}) …",
          flush=True)
    model = demo.demo_model(cfg.size)
    print(f"rounds demo: model ready in {time.perf_counter() - t:.1f} s: {model}", flush=True)
    tui = not args.no_tui and sys.stdout.isatty()
    if args.pipeline and not tui:
        root.mkdir(parents=True, exist_ok=True)
        with demo.demo_lock(root):
            summary = demo.run_pipeline(root, cfg, echo=lambda m: print(m, flush=True))
        return 0 if summary else 1
    before = {i.id for i in list_sessions(root)}
    proc = demo.start_pipeline_background(root, quick=args.quick, full=args.pipeline)
    print(f"rounds demo: started in the background (pid {proc.pid}, log {root / 'demo.log'}); sessions in {root}",
          flush=True)
    deadline = time.monotonic() + 120
    session = None
    while time.monotonic() < deadline and session is None:
        if proc.poll() is not None and proc.returncode != 0:
            raise UserError(f"the demo stopped before its first run started (exit {proc.returncode})",
                            hint=f"see {root / 'demo.log'}")
        new = [i for i in list_sessions(root) if i.id not in before and i.kind == "train"]
        session = new[0].path if new else None
        time.sleep(0.3)
    if session is None:
        raise UserError("the demo's first run did not start within 2 minutes", hint=f"see {root / 'demo.log'}")
    if not tui:
        print(f"rounds demo: training run {session.name} started; watch it with `rounds watch {session.name}`, "
              f"then assess the evaluation it is followed by with `rounds` (Home)")
        return 0
    from console.app import run_console

    return run_console(root, session, follow_demo=proc.pid if args.pipeline else None)


def cmd_home(args: argparse.Namespace) -> int:
    from console.app import run_console
    from engine.session import sessions_root

    return run_console(sessions_root(args.sessions))


def cmd_watch(args: argparse.Namespace) -> int:
    from console.app import run_console
    from engine.session import find_sessions_root, list_sessions

    root, why = find_sessions_root(args.sessions)
    if args.session:
        session = _session_path(args, args.session)
    else:
        infos = [i for i in list_sessions(root) if i.status != "unreadable"]
        running = [i for i in infos if i.effective_status == "running"]
        if not infos:
            raise UserError(f"no sessions in {root} ({why})",
                            hint="start one with `rounds train` or `rounds eval`, or point at yours: "
                                 "--sessions DIR or $ROUNDS_SESSIONS")
        session = (running or infos)[0].path
    return run_console(root, session)
