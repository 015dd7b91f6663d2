"""What every task of ours does around its work in a Python worker (both pass engines,
packing, scoring, sampling): one BLAS thread, and a cheap garbage collection between tasks.

PySpark's worker runs a full ``gc.collect()`` after each task of a reused worker. Once pyspark,
pyarrow, NumPy, SciPy and this package are imported, the collector has ~90,000 long-lived
objects to walk: 53.6 ms of a core after every task (timed on the 2-core machine: `gc.collect()`
after importing pyspark.worker, pandas, pyarrow, NumPy, SciPy and spark_gmm; 0.001 ms after
`gc.freeze()`), which a pass of the job-per-pass engine pays once per task and which delays
the worker's next task by as much. ``gc.freeze()`` moves
the objects alive now into the permanent generation, which collections skip (they are still
freed when no longer referenced; only a reference cycle among them would stay). So the first
task of a worker freezes what it imported, and a later task freezes again only if more modules
were imported since: a bounded number of times per worker."""

from __future__ import annotations

import gc
import sys
from contextlib import contextmanager
from typing import Iterator

from threadpoolctl import ThreadpoolController

_modules_at_freeze = 0  # len(sys.modules) when this worker last froze its objects
_controller = None  # threadpoolctl's view of the BLAS libraries loaded in this worker


def _settle() -> None:
    global _modules_at_freeze, _controller
    if len(sys.modules) != _modules_at_freeze:
        gc.collect()  # what is garbage now is not frozen
        gc.freeze()
        _modules_at_freeze = len(sys.modules)
        _controller = None  # a new module may have loaded another BLAS library


@contextmanager
def task_scope() -> Iterator[None]:
    """Runs a task's work with one BLAS thread (two tasks already share two cores: more
    threads per task only oversubscribe), after moving the worker's long-lived objects out
    of the garbage collector's reach. Building threadpoolctl's controller scans the loaded
    libraries: it is built once per worker (again after new imports), not per task."""
    global _controller
    _settle()
    if _controller is None:
        _controller = ThreadpoolController()
    with _controller.limit(limits=1, user_api="blas"):
        yield
