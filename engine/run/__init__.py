"""A training run inside a session, as three programs that share only the session folder:

- ``launch``: what ``rounds train`` / ``rounds resume`` run in the user's process: check the
  inputs, resolve the plan (no weights loaded), create the session, start the worker
  (``spawn``, the one way rounds starts a background process), follow its log;
- ``supervise``: for ``--launcher accelerate``, one process that starts every rank through
  ``accelerate launch``, relaunches them all with half the micro-batch when one runs out of
  memory, and names the rank that died;
- ``worker``: the training itself (``python -m engine.run.worker SESSION``; under a
  multi-process launch every rank runs ``python -m engine.run.rank SESSION``): signals and
  requests, checkpoints, OOM recovery, telemetry.

``engine.run.common`` holds what two of them share: checkpoint completeness, the one
micro-batch halving, OOM advice.
"""
