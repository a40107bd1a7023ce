"""Caches not stopped by their owner are stopped at interpreter exit and on SIGTERM, so that
their pending batch is published (issue 10: the original's snippets never call stop())."""

from __future__ import annotations

import atexit
import signal
import threading
import weakref
from typing import Any

# Live caches: objects with an ``_exit_stop()`` method.
_LIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()
_HOOKS = {"installed": False, "prev": None}
_LOCK = threading.Lock()


def register(cache: Any) -> None:
    _LIVE.add(cache)
    _install()


def unregister(cache: Any) -> None:
    _LIVE.discard(cache)


def stop_all() -> None:
    for c in list(_LIVE):
        try:
            c._exit_stop()
        except Exception:  # pragma: no cover - exit path: never raise
            pass


def _on_sigterm(signum: int, frame: Any) -> None:
    stop_all()
    prev = _HOOKS["prev"]
    if callable(prev):
        prev(signum, frame)
    else:
        # the default action (terminate), now that the batches are out
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def _install() -> None:
    """atexit for a normal exit (and SIGINT, whose KeyboardInterrupt unwinds to it); SIGTERM,
    whose default action would skip atexit, chained to whatever handler was there before. An
    ignored SIGTERM stays ignored: it ends nothing, so it must not stop the caches either."""
    with _LOCK:
        if _HOOKS["installed"]:
            return
        _HOOKS["installed"] = True
        atexit.register(stop_all)
        if threading.current_thread() is threading.main_thread():
            try:
                prev = signal.getsignal(signal.SIGTERM)
                if prev is not _on_sigterm and prev != signal.SIG_IGN:
                    _HOOKS["prev"] = prev
                    signal.signal(signal.SIGTERM, _on_sigterm)
            except (ValueError, OSError):  # pragma: no cover - not allowed here
                pass
