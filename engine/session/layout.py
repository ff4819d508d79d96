"""The session folder's layout: every file a session may hold, and every record and event kind
of ``events.jsonl`` with its fields. The one place these names are spelled; docs/ARCHITECTURE.md
lists them for people.

``events.jsonl`` holds one JSON object a line, each with ``time`` and ``type``:

=============  ==========================================================================
type           fields
=============  ==========================================================================
``metrics``    ``step``, ``max_steps`` and every key the trainer logs (``loss``, the stage's
               own: ``rewards/margins``, ``kl`` ...), ``seconds_per_step``, ``eta_seconds``,
               ``samples_per_second``, ``tokens_per_second``
``eval``       ``step``, ``eval_loss`` and the trainer's other ``eval_*`` keys
``progress``   ``step``, ``max_steps``, ``unit`` (evaluations' items, pairs' MiB), ETA
``system``     ``host`` (cpu_percent, ram_used ...), ``gpus`` [...], ``process``; ``rank``
``status``     ``status`` (and ``error`` / ``reason``)
``event``      ``kind``, one of ``EVENT_KINDS`` below, with the fields listed there
=============  ==========================================================================
"""

from __future__ import annotations

SESSION_JSON = "session.json"
EVENTS = "events.jsonl"
HISTORY = "history.json"  # what the events add up to, bounded: a cache readers rebuild (engine.session.history)
RUN_LOG = "run.log"
RESULTS = "results.jsonl"
RESULTS_CSV = "results.csv"
ASSESSMENTS = "assessments.jsonl"
ASSESSMENTS_CSV = "assessments.csv"
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
USED_FOR_PAIRS = "used_for_pairs.json"
PAIRS_REPORT_JSON = "pairs_report.json"
PAIRS_REPORT_MD = "pairs_report.md"
CHECKPOINTS = "checkpoints"
CHECKPOINT_COMPLETE = "rounds-complete.json"  # inside a checkpoint: it was written completely
ADAPTER, MODEL, MERGED = "adapter", "model", "merged"  # training outputs
TENSORBOARD = "tensorboard"  # `rounds train --report-to tensorboard`: the trainer's own event files
REQUESTS = "requests"  # files a run acts on at its next step (engine.session.requests)
STOP_REQUEST, CHECKPOINT_REQUEST, OOM_REQUEST = "stop", "checkpoint", "oom.json"
# session.json "control" of a run the user's own script started (engine.callback): it acts on
# request files only, so nothing may signal its process
CONTROL_REQUESTS = "requests"


def from_own_script(meta: dict) -> bool:
    """Whether this session is a run from the user's own script (stop and checkpoint by request file only)."""
    return meta.get("control") == CONTROL_REQUESTS

# record types (the ``type`` field)
METRICS, EVAL, PROGRESS, SYSTEM, STATUS, EVENT = "metrics", "eval", "progress", "system", "status", "event"

# event kinds (the ``kind`` field of ``type: event``) and their fields
PLAN = "plan"
DATA = "data"
LOADING = "loading"
CHECKPOINT = "checkpoint"
OOM_RECOVERED = "oom_recovered"
RESUMED = "resumed"
RESUME_REQUESTED = "resume_requested"
STOPPED = "stopped"
WARNING = "warning"
ERROR = "error"
FINISHED = "finished"
IMPORTED = "imported"

EVENT_KINDS = {
    PLAN: "plan, device, bf16, optimizer, predicted_peak_bytes, chosen_by, micro_batch, grad_accum, "
          "precompute_ref, gradient_checkpointing, max_length",
    DATA: "train_rows, val_rows, tokens (prompt/answer/total length statistics)",
    LOADING: "message",
    CHECKPOINT: "path, step, seconds, reason",
    OOM_RECOVERED: "step, error, micro_batch [old, new], grad_accum [old, new]; rank (multi-process)",
    RESUMED: "checkpoint (training) or done, remaining (evaluation)",
    RESUME_REQUESTED: "previous_status",
    STOPPED: "reason, step",
    WARNING: "message",
    ERROR: "message; failed_rank (multi-process)",
    FINISHED: "step, outputs, the trainer's summary (training); items (evaluation); train_pairs, val_pairs, "
              "dropped (pairs)",
    IMPORTED: "file, items",
}
