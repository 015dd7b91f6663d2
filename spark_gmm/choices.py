"""The choices of the estimator's string parameters that the batch jobs offer too, in one
light module (no pyspark): spark_gmm.params validates the estimator's params with them and
spark_gmm.config the jobs' settings. The covariance types are the kernel's
(``kernel.COVARIANCE_TYPES``), the engines the engine package's (``engine.ENGINES``)."""

INIT_MODES = ("kmeans", "k-means++", "random", "randomFromData")
HANDLE_INVALID = ("error", "skip")
