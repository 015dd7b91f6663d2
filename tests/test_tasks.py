"""spark_gmm.engine.tasks, in a fresh interpreter standing in for a Python worker (no Spark): the
first task freezes what the worker imported, later tasks freeze again only after new
imports, and the work runs with one BLAS thread."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT, script_env

WORKER = """
import gc, json
from spark_gmm import kernel
from spark_gmm.engine import tasks  # what a pass imports (NumPy, SciPy)

def blas_threads():
    from threadpoolctl import threadpool_info  # imported by spark_gmm.engine.tasks
    return sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})

facts = {"frozen_before": gc.get_freeze_count(), "blas_outside": blas_threads()}
with tasks.task_scope():
    facts["blas_inside"] = blas_threads()
facts["frozen_first_task"] = gc.get_freeze_count()
facts["blas_after"] = blas_threads()
garbage = [[] for _ in range(1000)]
with tasks.task_scope():
    pass
facts["frozen_second_task"] = gc.get_freeze_count()
import fractions  # a new module: the next task freezes again
with tasks.task_scope():
    pass
facts["frozen_after_import"] = gc.get_freeze_count()
facts["collectable_after_freeze"] = len(gc.get_objects())
print(json.dumps(facts))
"""


def test_first_task_freezes_the_imports_and_limits_blas_to_one_thread():
    env = script_env({"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"})
    proc = subprocess.run(
        [sys.executable, "-c", WORKER],
        cwd=str(REPO_ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    facts = json.loads(proc.stdout)
    assert facts["frozen_before"] == 0
    # NumPy, SciPy, pyarrow and the package: tens of thousands of objects out of reach
    assert facts["frozen_first_task"] > 20_000
    # no new module, no new freeze: the 1,000 lists made since stay collectable
    assert facts["frozen_second_task"] == facts["frozen_first_task"]
    assert facts["frozen_after_import"] > facts["frozen_second_task"]
    assert facts["collectable_after_freeze"] < 5_000
    assert facts["blas_inside"] == [1]
    assert facts["blas_outside"] == facts["blas_after"] == [2]
