"""Pass engines: what runs the statistics passes of a fit, wherever its rows are held.

* :mod:`~spark_gmm.engine.base`: the interface (:class:`~spark_gmm.engine.base.PassEngine`)
  and the partition-ordered sum every engine uses, so all give the same bits;
* :mod:`~spark_gmm.engine.driver`: a small fit's rows collected once, every pass in process;
* :mod:`~spark_gmm.engine.resident`: the rows held by one barrier stage's Python workers for
  the whole fit, a coordinator socket on the driver (:mod:`~spark_gmm.engine.channel`); its
  task side in :mod:`~spark_gmm.engine.resident_worker`;
* :mod:`~spark_gmm.engine.job_per_pass`: one Spark job per pass over cached blocks;
* :mod:`~spark_gmm.engine.choose`: which of them runs a fit, and why;
* shared: :mod:`~spark_gmm.engine.blocks` (rows as float64 blocks, what every task imports),
  :mod:`~spark_gmm.engine.tasks` (a task's set-up), :mod:`~spark_gmm.engine.partitions`,
  :mod:`~spark_gmm.engine.spark_conf`; :mod:`~spark_gmm.engine.faults` is test-only.

This package's ``__init__`` stays free of pyspark: the tasks import its light modules.
"""

# The choices of the ``engine`` parameter: 'auto' picks one of the other three by size and by
# what the session allows (spark_gmm.engine.choose).
ENGINES = ("auto", "driver", "resident", "jobPerPass")
