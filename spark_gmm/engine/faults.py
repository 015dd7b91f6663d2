"""Test-only fault injection for the resident engine's workers (``SPARK_GMM_FAULT_INJECTION``
on the driver; see :func:`spark_gmm.engine.resident._fault_marker`).

The resident worker of barrier task 0 calls :func:`inject` before it reads its rows (moment
"load") and on its third command twice: at moment "command" (the command was received,
nothing computed yet) and at moment "replied" (right after its reply was sent). Each mode
fires at its own moment only, and, but for the "load" modes, only once per fit: the first
worker to create the marker file (``O_CREAT | O_EXCL``) at that moment. The marker file then
holds the wall time it fired at.

Modes:

* ``exit-first-attempt`` ("command"): the Python worker exits (a crashing worker);
* ``hang-first-attempt`` ("command"): the Python worker sleeps for an hour (a hung worker);
* ``exit-while-loading`` and ``memory-error-while-loading`` ("load", barrier task 0 about to
  read its rows, at every stage attempt): the worker exits as the OOM killer would end it, or
  raises MemoryError;
* ``stop-host-mid-pass`` ("command") and ``stop-host-after-reply`` ("replied"): the whole
  executor stops as when its host vanishes (a spot instance taken back): SIGSTOP to the
  executor JVM that runs this worker, then to all of that JVM's descendants (the pyspark
  daemon and the workers forked from it), this process last. No socket closes; Spark only
  learns from the missing heartbeats. Before anything stops, a "ghost" process (double-forked
  from this worker, so no longer a descendant of the executor JVM) takes copies of all this
  worker's file descriptors and sleeps: it stands for the vanished host's kernel, which keeps
  the worker's connection to the driver open whatever happens to the stopped processes here
  (on local-cluster the Worker SIGKILLs the executor JVM Spark declared lost, about 10 s
  later; the stopped pyspark daemon's process group is then orphaned, and the kernel sends
  it SIGHUP and SIGCONT, which kills the stopped worker and closes its socket -- none of which
  could happen on a real lost host). The ghost exits by itself after ``GHOST_SECONDS``.
  The ghost and every stopped process are appended to ``marker + ".pids"`` (a line "pid
  start-time") *before* it is stopped, so that the test can SIGKILL them all afterwards
  (:func:`kill_stopped`). Only an executor JVM (``CoarseGrainedExecutorBackend``) is ever
  stopped: under a ``local[...]`` master (workers forked by the driver's JVM) this raises.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Dict, List, Optional, Tuple

# The driver's environment variable naming the mode (tests only). The job-per-pass engine
# knows "exit-first-attempt" too: it kills the Python worker on each statistics task's first
# attempt (tests/test_reliability.py shows a retried fit equals a clean one).
FAULT_INJECTION = "SPARK_GMM_FAULT_INJECTION"

MODES = {  # mode -> the moment it fires at
    "exit-first-attempt": "command",
    "hang-first-attempt": "command",
    "stop-host-mid-pass": "command",
    "stop-host-after-reply": "replied",
    "exit-while-loading": "load",
    "memory-error-while-loading": "load",
}
# Modes that fire at every stage attempt, not once per fit: a worker that cannot hold its rows
# (killed for memory, or out of it) fails the same way however often Spark retries.
EVERY_ATTEMPT = {"exit-while-loading", "memory-error-while-loading"}
EXECUTOR_MAIN = "CoarseGrainedExecutorBackend"  # in the cmdline of an executor JVM
GHOST_SECONDS = 900.0  # the ghost's life at most, should the test not kill it


def inject(fault: Optional[Tuple[str, str]], moment: str) -> None:
    """The first time in a fit (a marker file) that ``fault``'s mode meets its own ``moment``
    ("command" or "replied"): crash, hang or stop the host. Unknown modes do nothing."""
    if not fault:
        return
    mode, marker = fault
    if MODES.get(mode) != moment:
        return  # not this mode's moment: the marker stays for it
    if mode == "exit-while-loading":
        os._exit(137)  # as the kernel's OOM killer ends a worker (SIGKILL)
    if mode == "memory-error-while-loading":
        raise MemoryError("injected: the rows do not fit")
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return  # fired already in this fit (an earlier stage attempt)
    try:
        os.write(fd, repr(time.time()).encode())
    finally:
        os.close(fd)
    if mode == "exit-first-attempt":
        os._exit(3)  # a crashing Python worker mid-fit, for the retry tests
    if mode == "hang-first-attempt":
        time.sleep(3600)  # a hung worker, for the timeout tests
    if mode in ("stop-host-mid-pass", "stop-host-after-reply"):
        stop_host(marker + ".pids")


# --------------------------------------------------------------------------- a lost host


def _stat(pid: int) -> Tuple[int, str, str]:
    """(parent pid, state letter, start time in clock ticks) of a process (/proc/<pid>/stat);
    pid and start time name a process for good (a pid alone may be reused)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        text = fh.read().decode(errors="replace")
    fields = text[text.rindex(")") + 2 :].split()  # the name (in parentheses) may hold spaces
    return int(fields[1]), fields[0], fields[19]


def _cmdline(pid: int) -> List[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read().decode(errors="replace").split("\0")


def executor_jvm(pid: Optional[int] = None) -> int:
    """The executor JVM this process descends from (its parent is the pyspark daemon, whose
    parent is the executor JVM), found by walking parent pids."""
    pid = os.getpid() if pid is None else pid
    seen = pid
    while pid > 1:
        pid = _stat(pid)[0]
        if any(EXECUTOR_MAIN in arg for arg in _cmdline(pid)):
            return pid
    raise RuntimeError(
        f"spark_gmm fault injection: process {seen} runs in no executor JVM "
        f"({EXECUTOR_MAIN}); stop-host-* modes need separate executor JVMs "
        "(local-cluster or a real cluster), not a local[...] master"
    )


def _children() -> Dict[int, List[int]]:
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(_stat(int(entry))[0], []).append(int(entry))
            except (OSError, ValueError):
                pass  # gone meanwhile
    return children


def descendants(root: int) -> List[int]:
    """Every process below ``root`` (parents before their children)."""
    tree, out, todo = _children(), [], [root]
    while todo:
        for child in tree.get(todo.pop(0), []):
            out.append(child)
            todo.append(child)
    return out


def _ghost() -> int:
    """Double-forks a process that holds copies of all this process's file descriptors (its
    sockets stay open) and sleeps for ``GHOST_SECONDS``; returns its pid. Its parent exits at
    once, so it is adopted by init (or a subreaper) and is no descendant of the executor."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the intermediate child: fork the ghost, report its pid, exit
        try:
            ghost = os.fork()
            if ghost == 0:
                try:
                    # its own session: when the executor JVM dies, the kernel sends SIGHUP and
                    # SIGCONT to the stopped pyspark daemon's process group (an orphaned one
                    # with stopped members), which kills the stopped worker
                    os.setsid()
                    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                        signal.signal(sig, signal.SIG_IGN)
                    os.close(read_end)
                    os.close(write_end)
                    deadline = time.monotonic() + GHOST_SECONDS
                    while time.monotonic() < deadline:
                        time.sleep(min(5.0, max(deadline - time.monotonic(), 0.01)))
                finally:
                    os._exit(0)
            os.write(write_end, str(ghost).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end, "rb") as fh:
        return int(fh.read().decode())


def stop_host(pids_file: str) -> None:
    """SIGSTOPs this process's executor JVM and all its descendants, this process last,
    appending each pid to ``pids_file`` before it is stopped (a ghost holding this process's
    sockets open is recorded first: see the module's docstring)."""
    me = os.getpid()
    jvm = executor_jvm(me)
    stopped = set()
    ghost = _ghost()
    with open(pids_file, "a") as record:
        record.write(f"{ghost} {_stat(ghost)[2]}\n")
        record.flush()
        os.fsync(record.fileno())

        def stop(pid: int):
            try:
                started = _stat(pid)[2]
            except OSError:
                return  # gone meanwhile
            record.write(f"{pid} {started}\n")
            record.flush()
            os.fsync(record.fileno())
            stopped.add(pid)
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass

        stop(jvm)  # first: it forks no more workers, sends no more heartbeats
        while True:  # until no new descendant shows up (one forked meanwhile)
            new = [pid for pid in descendants(jvm) if pid != me and pid not in stopped]
            if not new:
                break
            for pid in new:
                stop(pid)
        record.write(f"{me} {_stat(me)[2]}\n")
        record.flush()
        os.fsync(record.fileno())
    os.kill(me, signal.SIGSTOP)  # returns only if someone sends SIGCONT


def process_state(pid: int) -> str:
    """A process's state letter (T: stopped, Z: dead, not reaped...), or "gone"."""
    try:
        return _stat(pid)[1]
    except (OSError, ValueError):
        return "gone"


def stopped_pids(pids_file: str) -> List[Tuple[int, str]]:
    """The (pid, start time) pairs :func:`stop_host` recorded ([] when it never ran)."""
    try:
        with open(pids_file) as fh:
            return [
                (int(pid), started)
                for pid, started in (line.split() for line in fh if line.strip())
            ]
    except FileNotFoundError:
        return []


def kill_stopped(pids_file: str) -> List[int]:
    """Test cleanup: SIGKILLs every process :func:`stop_host` recorded that still exists
    (the same pid *and* start time, never a process that reused the pid); returns them."""
    killed = []
    for pid, started in stopped_pids(pids_file):
        try:
            _, state, now = _stat(pid)
            if now != started or state == "Z":
                continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (OSError, ValueError):
            pass  # gone already
    return killed
