"""Console logging for the command-line entry points (run, evaluate, train_umci, the demo).

Why not `logging.basicConfig`: importing Beam logs a warning through the root logger, which
installs a bare root handler at import time, and from then on basicConfig does nothing. Our INFO
progress lines (shards matched, images read, training loss, the tiny build) would vanish and a
first demo run would train for minutes in silence.
"""
from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET_LOGGERS = ("apache_beam",)  # INFO there is one line per bundle and stage: kept at WARNING


def show_progress() -> None:
    """INFO lines on stderr with timestamps, Beam's own logging kept at WARNING.

    Records still reach the root logger, so handlers someone else installed (pytest's log
    capture) see them; only plain stderr handlers get our format.
    """
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        if type(handler) is logging.StreamHandler:
            handler.setFormatter(logging.Formatter(FORMAT))
