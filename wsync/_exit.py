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
import signal
import threading
from collections.abc import Callable
from typing import Final

__all__ = ["on_fork_in_child", "pid", "register", "start_thread", "threads_refused"]

logger = logging.getLogger(__name__)

_refused = False  # a thread was refused: the interpreter is shutting down

# This process's id, kept up to date by a fork hook: a check on every send() reads it with
# no system call (os.getpid() is one on every call since glibc 2.25).
pid = os.getpid()


def _forked() -> None:
    global pid
    pid = os.getpid()


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


on_fork_in_child(_forked)  # at import: before any client's hook, which may read ``pid``


# Signals a user sends the process (Ctrl-C, kill, timers) that wsync's threads never take: the
# kernel gives a process-directed signal to any thread that does not block it, and CPython
# runs Python handlers in the main thread only when that thread next runs bytecode; a Ctrl-C
# taken by a wsync thread would leave a main thread blocked in a timed wait (flush(10),
# result(timeout)) deaf to it until the wait ends. So every wsync thread is born with them
# blocked, and they reach the main thread (or a user's thread) at once.
_BLOCKED: Final = frozenset(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGALRM", "SIGUSR1", "SIGUSR2",
                 "SIGCHLD", "SIGWINCH")
    if hasattr(signal, name)
)


def start_thread(thread: threading.Thread) -> bool:
    """Start ``thread`` with the process-directed signals blocked in it (see ``_BLOCKED``);
    False when the interpreter is shutting down and refuses new threads.

    Python 3.12+ does, even in exit hooks, where wsync's exit flush may still need one
    ("can't create new thread at interpreter shutdown": the message is the only sign of it).
    The caller then does the thread's work itself. Any other failure is raised.
    """
    global _refused
    try:
        if hasattr(signal, "pthread_sigmask"):
            # A new thread inherits its creator's mask: block, start, restore (a signal that
            # comes meanwhile stays pending and is taken as soon as the mask is restored).
            # The mask is read first, without changing it: a Ctrl-C raised as the blocking
            # call returns is then inside the try, and the mask is restored all the same.
            original = signal.pthread_sigmask(signal.SIG_BLOCK, ())
            try:
                signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
                thread.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, original)
        else:
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
