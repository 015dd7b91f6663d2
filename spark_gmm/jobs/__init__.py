"""The batch jobs (fit, score, select, sample), one module per concern; ``spark_gmm.cli`` and
``jobs/*.py`` are their entry points.

Each job runs the same way under ``spark-submit`` (any master; the job joins the session that
spark-submit set up) and as a plain Python program (``python jobs/fit.py``, ``python -m
spark_gmm.cli fit``, or a console script), where it starts Spark in local mode itself.

Every job:

* reads its settings from the built-in defaults, then ``--config FILE`` (TOML), then the flags
  (:mod:`spark_gmm.config`), and writes the resolved settings beside its outputs;
* refuses to write into an existing, non-empty output folder unless ``--overwrite``;
* checks its input before any costly work, and reports any problem as ONE line on stderr
  (``spark-gmm fit: error: ...``) with a non-zero exit code: 2 for bad settings, 1 for bad
  data, paths or a failed Spark job (``--traceback`` adds the Python traceback).

Paths go through Hadoop's FileSystem API of the running Spark, so ``hdfs://``, ``s3a://``,
``abfss://`` ... work wherever Spark itself can read and write them.

The modules, each importing only those listed before it:

* :mod:`.errors` -- :class:`JobError`, exit codes, the one-line message of any exception;
* :mod:`.filesystem` -- the Hadoop FileSystem wrapper;
* :mod:`.session` -- starting Spark (local mode's environment and logging) or joining a session;
* :mod:`.job` -- the :class:`Job` of one run: settings, session, output folder, timings;
* :mod:`.runner` -- settings resolved, the job's log, failures turned into one line + exit code;
* :mod:`.outputs` -- output column checks and writing DataFrames in the output formats;
* :mod:`.demo` -- the ``--demo`` data set;
* :mod:`.inputs` -- reading the input table and checking its feature columns; loading a model;
* :mod:`.training_scores` -- the training log-likelihood quantiles and the anomaly threshold;
* :mod:`.report` -- the plots' sample, the plots, report.json and report.html;
* :mod:`.fit`, :mod:`.score`, :mod:`.select`, :mod:`.sample` -- the four jobs (``main_<job>``
  runs one from its flags, ``run_<job>`` is its body).
"""
