"""Save and load stages as JSON metadata + Parquet data (Spark's layout; never pickle).

``path/metadata``: one JSON line as Spark's DefaultParamsWriter writes it (class, timestamp,
sparkVersion, uid, paramMap, defaultParamMap) plus ``formatVersion`` and the names of child
stages. ``path/data``: Parquet written by Spark. ``path/<child>``: nested stages (a warm-start
model). Only DataFrame reads and writes are used, so it works on Spark Connect too.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from pyspark.ml.util import (
    DefaultParamsReader,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import SparkSession

FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A saved stage that is missing, incomplete, of another class or another format."""


def _class_name(cls) -> str:
    return cls.__module__ + "." + cls.__name__


def _path_exists(spark: SparkSession, path: str) -> bool:
    """Whether something is stored at ``path``: the Hadoop file system on classic sessions,
    a read attempt on Spark Connect (no JVM on the client)."""
    try:
        jsc = spark.sparkContext._jsc
    except Exception:  # Spark Connect
        jsc = None
    if jsc is not None:
        hadoop_path = spark._jvm.org.apache.hadoop.fs.Path(path)
        fs = hadoop_path.getFileSystem(jsc.hadoopConfiguration())
        if not fs.exists(hadoop_path):
            return False
        # an empty directory (e.g. a fresh temporary one) is not in the way
        return (
            not fs.getFileStatus(hadoop_path).isDirectory() or len(fs.listStatus(hadoop_path)) > 0
        )
    if _local_dir_with_content(path):
        return True
    try:
        spark.read.text(os.path.join(path, "metadata")).limit(1).collect()
        return True
    except Exception:
        return False


def _local_dir_with_content(path: str) -> bool:
    local = path[len("file:") :] if path.startswith("file:") else path
    if "://" in path and not path.startswith("file:"):
        return False
    return os.path.isdir(local) and bool(os.listdir(local))


class StageWriter(MLWriter):
    """Writes a stage that implements ``_save_parts()`` ->
    (extra metadata dict, data DataFrame or None, {child name: child stage})."""

    def __init__(self, instance):
        super().__init__()
        self.instance = instance

    def save(self, path: str) -> None:
        """Saves the stage to ``path``: its metadata, its data and its child stages. An
        existing path is a FileExistsError unless :meth:`overwrite` was called."""
        spark = self.sparkSession
        if not self.shouldOverwrite and _path_exists(spark, path):
            raise FileExistsError(
                f"path {path} already exists; use write().overwrite().save(path) to replace it"
            )
        mode = "overwrite" if self.shouldOverwrite else "error"
        extra, data, children = self.instance._save_parts(spark)
        params = {p.name: v for p, v in self.instance._paramMap.items() if p.name not in children}
        extra = dict(extra, formatVersion=FORMAT_VERSION, children=sorted(children))
        metadata = DefaultParamsWriter._get_metadata_to_save(self.instance, spark, extra, params)
        spark.createDataFrame([(metadata,)], "value string").coalesce(1).write.mode(mode).text(
            os.path.join(path, "metadata")
        )
        if data is not None:
            data.coalesce(1).write.mode(mode).parquet(os.path.join(path, "data"))
        for name, child in children.items():
            writer = child.write()
            if self.shouldOverwrite:
                writer = writer.overwrite()
            writer.save(os.path.join(path, name))

    def saveImpl(self, path: str) -> None:  # pragma: no cover - save() does the work
        """Saves the stage to ``path``, as :meth:`save` does."""
        self.save(path)


def read_metadata(spark: SparkSession, path: str, cls) -> Dict[str, Any]:
    """The metadata of the stage saved at ``path``, checked to be a complete one of class
    ``cls`` in this format version; a ModelFileError otherwise."""
    expected = _class_name(cls)
    try:
        lines = spark.read.text(os.path.join(path, "metadata")).collect()
    except Exception as exc:
        raise _unreadable(f"no saved {cls.__name__} at {path}", path, "metadata", exc) from None
    if not lines:
        raise ModelFileError(f"the metadata at {path} is empty (an interrupted save?)")
    try:
        metadata = json.loads(lines[0][0])
    except ValueError:
        raise ModelFileError(f"the metadata at {path} is not valid JSON (truncated?)") from None
    found = metadata.get("class")
    if found != expected:
        raise ModelFileError(f"{path} holds a {found}, not a {expected}")
    version = metadata.get("formatVersion")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was saved in format version {version}; this spark_gmm reads "
            f"version {FORMAT_VERSION}"
        )
    for key in ("uid", "paramMap", "defaultParamMap", "sparkVersion"):
        if key not in metadata:
            raise ModelFileError(f"the metadata at {path} lacks '{key}' (truncated?)")
    return metadata


def _unreadable(missing: str, path: str, part: str, exc: Exception) -> ModelFileError:
    """A clear error for a part of a saved stage that Spark could not read."""
    text = str(exc)
    if "PATH_NOT_FOUND" in text or "does not exist" in text:
        return ModelFileError(f"{missing}: {os.path.join(path, part)} does not exist")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # Py4J's first line only names the call; the Java exception line says what went wrong.
    reason = next(
        (line for line in lines if "Exception: " in line and "Py4J" not in line),
        lines[0] if lines else type(exc).__name__,
    )
    return ModelFileError(
        f"the {part} of the stage at {path} cannot be read: it is truncated or corrupt "
        f"({reason[:300]})"
    )


def read_data(spark: SparkSession, path: str) -> list:
    """The rows of ``path/data``."""
    try:
        return spark.read.parquet(os.path.join(path, "data")).collect()
    except Exception as exc:
        raise _unreadable(
            f"the data of the stage at {path} is missing (incomplete save?)", path, "data", exc
        ) from None


class StageReader(MLReader):
    """Reads a stage whose class implements ``_from_saved(spark, path, metadata)``."""

    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path: str):
        """The stage saved at ``path``, with its saved uid and params."""
        spark = self.sparkSession
        metadata = read_metadata(spark, path, self.cls)
        instance = self.cls._from_saved(spark, path, metadata)
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        return instance


def load_child(cls, path: str, name: str, metadata: Dict[str, Any]) -> Optional[Any]:
    """The child stage ``name`` (of class ``cls``) saved with the stage at ``path``, or None
    when its ``metadata`` lists no such child."""
    if name not in metadata.get("children", []):
        return None
    return cls.load(os.path.join(path, name))


class PersistentStage(MLReadable, MLWritable):
    """save/load for a stage that implements ``_save_parts(spark)`` and
    ``_from_saved(spark, path, metadata)`` (see StageWriter and StageReader)."""

    def write(self) -> StageWriter:
        """A StageWriter for this stage."""
        return StageWriter(self)

    @classmethod
    def read(cls) -> StageReader:
        """A StageReader for this class."""
        return StageReader(cls)
