"""rounds engine: headless planning, training, evaluation, statistics and session files.

Never imports ``textual``; the console reads what the engine writes to session folders.
"""

__version__ = "0.1.0"
