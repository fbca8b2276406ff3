"""Console logging for the command-line entry points (run, evaluate, train_umci, the demo).

Not `logging.basicConfig`: importing Beam installs a bare root handler, after which basicConfig
does nothing and our INFO progress lines would vanish (docs/decisions.md, "Beam and runners").
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
