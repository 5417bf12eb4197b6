"""Process attributes that keep parsers away from Parseq's own processes, and from outliving
their run: dumpability, capabilities, the child-subreaper role, and killing what a run left.

Linux only (``prctl(2)``); elsewhere every call here does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import threading
from collections import Counter
from collections.abc import Container

from parseq.sandbox.zygote import children

log = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
#: What a worker that is not root needs to run parsers as another user (``capabilities(7)``
#: bit numbers): switch user and group, hand the run's folders over and take them back, read
#: and remove what the parser wrote there, signal its processes.
SWITCH_CAPS = {"chown": 0, "dac_override": 1, "fowner": 3, "kill": 5, "setgid": 6, "setuid": 7}

_PRCTL = getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), "prctl", None)


def _prctl(option: int, arg: int) -> bool:
    return _PRCTL is not None and _PRCTL(option, arg, 0, 0, 0) == 0


def make_undumpable() -> None:
    """Make this process non-dumpable: its ``/proc/<pid>/environ``, ``mem``, ``fd`` and the
    like become root's, so a parser running as the same user cannot read the keys in its
    environment or memory, nor attach to it. Children get it back when they exec."""
    if not _prctl(PR_SET_DUMPABLE, 0):
        log.warning("could not make this process non-dumpable (prctl: not Linux?)")


def become_subreaper() -> bool:
    """Have the orphans among this process's descendants re-parented to it instead of to init
    (``PR_SET_CHILD_SUBREAPER``), so :func:`sweep_orphans` can find and kill them."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def clear_ambient_caps() -> None:
    """Drop the ambient capabilities, so a program exec'd after a user switch gets none of the
    worker's (``preexec_fn`` path: runs between fork and exec)."""
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def effective_caps(pid: int | str = "self") -> int:
    """The effective capability set of a process, as a bit mask (0 when unknown)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def missing_switch_caps(caps: int | None = None) -> list[str]:
    """The capabilities of :data:`SWITCH_CAPS` this process lacks (root: none)."""
    caps = effective_caps() if caps is None else caps
    return [name for name, bit in SWITCH_CAPS.items() if not caps >> bit & 1]


def can_switch_user(euid: int | None = None, caps: int | None = None) -> bool:
    """Whether a process can run parsers as another user: root, or holding every capability
    of :data:`SWITCH_CAPS` (a non-root worker started with them as ambient caps). Without
    ``euid``, this process; with it, one of that euid and effective ``caps``."""
    if euid is None:
        euid = os.geteuid()
        if euid != 0 and caps is None:  # root needs no look at /proc (asked on every run)
            caps = effective_caps()
    return euid == 0 or (caps is not None and not missing_switch_caps(caps))


def uid_of(pid: int) -> int | None:
    """The real uid of process ``pid``; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def sweep_orphans(uid: int, keep: Container[int] = ()) -> int:
    """SIGKILL and reap every child of this (subreaper) process running as ``uid`` but those in
    ``keep``: the processes runs of that user left behind (a double fork, a new session), which
    were re-parented here when their parents died. Repeats until none is left, as a process
    forking while it is killed re-parents its children here too. Returns how many it killed."""
    killed = 0
    while True:
        found = [p for p in children() if p not in keep and uid_of(p) == uid]
        if not found:
            return killed
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in found:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        killed += len(found)


_live_lock = threading.Lock()
_live: Counter[int] = Counter()  # uid -> runs of that user this process is running
_subreaper_pid = 0


def run_started(uid: int) -> None:
    """Note a run started as ``uid``; the first makes this process a subreaper, so what the
    run leaves behind is re-parented here (:func:`run_ended`)."""
    global _subreaper_pid
    with _live_lock:
        _live[uid] += 1
        if _subreaper_pid != os.getpid() and become_subreaper():
            _subreaper_pid = os.getpid()


def run_ended(uid: int) -> int:
    """Note the end of a run started as ``uid``. When it was this process's last run of that
    user, kill the orphans of that user re-parented here (:func:`sweep_orphans`); with others
    still running they may be theirs, and the last one to end kills them. Returns how many."""
    with _live_lock:
        _live[uid] -= 1
        if _live[uid] > 0:
            return 0
        del _live[uid]
        killed = sweep_orphans(uid) if _subreaper_pid == os.getpid() else 0
    if killed:
        log.info("killed %d process(es) of uid %d left behind by a finished run", killed, uid)
    return killed
