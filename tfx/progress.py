"""Progress bars on a terminal; in a log file (stderr not a terminal: SLURM, nohup, CI) a log line
now and then instead, so a long run shows it is alive."""

from __future__ import annotations

import logging
import os
import sys
import threading

from tqdm import tqdm

LOG_EVERY_S = float(os.environ.get("TFX_LOG_EVERY_S", 30))  # seconds between log lines


class _ToLog:
    """A file for tqdm that logs each refresh as one line."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def write(self, text: str) -> None:
        text = text.strip("\r\n\x1b[A ")
        if text:
            self.logger.info(text)

    def flush(self) -> None:
        pass


class _LoggedBar(tqdm):
    """A bar that logs its line every LOG_EVERY_S seconds, also while one step takes longer."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(LOG_EVERY_S):
            self.refresh()

    def close(self) -> None:
        if hasattr(self, "_stop"):
            self._stop.set()
        super().close()


def progress(total=None, desc: str = "", unit: str = "it", initial: int = 0, **kw) -> tqdm:
    """``tqdm(...)`` on a terminal, else the same counts logged to ``tfx.progress`` every 30 s."""
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, **kw)
    return _LoggedBar(total=total, desc=desc, unit=unit, initial=initial, file=_ToLog(logging.getLogger("tfx.progress")),
                      mininterval=LOG_EVERY_S, maxinterval=LOG_EVERY_S, ascii=True, **kw)
