"""Process lifecycle hooks: interpreter exit and fork; the only user of ``threading``'s
private ``_register_atexit``.

Its one job: run wsync's exit hook early enough, tell wsync about a fork, and say when the
interpreter refuses to start a thread because it is shutting down. It must not know what
the hooks or the threads do.

Why ``threading._register_atexit``: at interpreter exit, ``threading._shutdown()`` runs the
functions registered there (newest first), then joins every non-daemon thread, and only then
does ``atexit`` run. ``concurrent.futures.thread`` registers its own hook there, which joins
the pool's workers: a worker blocked in ``send_and_wait(timeout=None)`` would keep the
process alive for ever before an ``atexit`` hook of ours could release it. So wsync's hook
is registered there too, after importing ``concurrent.futures.thread`` (whose hook is then
registered first, so ours runs before it). Where the private function is missing (a future
Python), plain ``atexit`` is used; ``tests/unit/test_exit.py`` fails loudly on that change.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable

__all__ = ["on_fork_in_child", "pid", "register", "start_thread", "threads_refused"]

logger = logging.getLogger(__name__)

_refused = False  # a thread was refused: the interpreter is shutting down

# This process's id, kept up to date by a fork hook: a check on every send() reads it with
# no system call (os.getpid() is one on every call since glibc 2.25).
pid = os.getpid()


def _forked() -> None:
    global pid
    pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def _early_atexit() -> Callable[[Callable[[], None]], None] | None:
    register = getattr(threading, "_register_atexit", None)
    return register if callable(register) else None


def register(on_exit: Callable[[], None], *, after_fork_in_child: Callable[[], None]) -> None:
    """Run ``on_exit`` at interpreter exit, before thread pools join their workers; run
    ``after_fork_in_child`` in the child after every ``fork()``. Call once, at import."""
    import concurrent.futures.thread  # noqa: F401 - registers the pools' hook before ours

    early = _early_atexit()
    if early is not None:
        try:
            early(on_exit)
        except RuntimeError:  # imported during interpreter shutdown
            atexit.register(on_exit)
    else:
        atexit.register(on_exit)
    on_fork_in_child(after_fork_in_child)


def on_fork_in_child(fn: Callable[[], None]) -> None:
    """Run ``fn`` in the child after every ``fork()`` (where there is ``fork()``)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=fn)


def start_thread(thread: threading.Thread) -> bool:
    """Start ``thread``; False when the interpreter is shutting down and refuses new threads.

    Python 3.12+ does, even in exit hooks, where wsync's exit flush may still need one
    ("can't create new thread at interpreter shutdown": the message is the only sign of it).
    The caller then does the thread's work itself. Any other failure is raised.
    """
    global _refused
    try:
        thread.start()
    except RuntimeError as exc:
        if "shutdown" not in str(exc):
            raise
        _refused = True
        return False
    return True


def threads_refused() -> bool:
    """Whether :func:`start_thread` was refused a thread (the interpreter is shutting down)."""
    return _refused
