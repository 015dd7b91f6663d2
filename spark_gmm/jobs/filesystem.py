"""The Hadoop FileSystem of the running Spark, for the jobs' paths (local, hdfs://, s3a://, ...)."""

from __future__ import annotations

from typing import List


class FileSystem:
    """Hadoop FileSystem calls through the session's JVM (any scheme Spark can use)."""

    def __init__(self, spark):
        sc = spark.sparkContext
        self._jvm = sc._jvm
        self._conf = sc._jsc.hadoopConfiguration()

    def _path(self, path: str):
        return self._jvm.org.apache.hadoop.fs.Path(path)

    def _fs(self, p):
        return p.getFileSystem(self._conf)

    @staticmethod
    def join(base: str, *parts: str) -> str:
        """``base`` and ``parts`` joined with single slashes (a path string, not resolved)."""
        return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])

    def qualify(self, path: str) -> str:
        """``path`` fully qualified by its file system (scheme, authority, absolute path)."""
        p = self._path(path)
        return str(self._fs(p).makeQualified(p).toString())

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""
        p = self._path(path)
        return bool(self._fs(p).exists(p))

    def glob_exists(self, path: str) -> bool:
        """Whether the glob pattern ``path`` matches at least one path."""
        p = self._path(path)
        statuses = self._fs(p).globStatus(p)
        return statuses is not None and len(statuses) > 0

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory (an error when it does not exist)."""
        p = self._path(path)
        return bool(self._fs(p).getFileStatus(p).isDirectory())

    def list_names(self, path: str) -> List[str]:
        """The names (not full paths) of the entries of the directory ``path``."""
        p = self._path(path)
        return [str(s.getPath().getName()) for s in self._fs(p).listStatus(p)]

    def delete(self, path: str) -> None:
        """Deletes ``path``, recursively for a directory."""
        p = self._path(path)
        self._fs(p).delete(p, True)

    def mkdirs(self, path: str) -> None:
        """Creates the directory ``path`` and any missing parents."""
        p = self._path(path)
        self._fs(p).mkdirs(p)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Writes ``data`` to the file ``path``, replacing any file there; local files are
        written without Hadoop's ``.crc`` checksum files beside them."""
        p = self._path(path)
        fs = self._fs(p)
        if str(fs.getUri().getScheme()) == "file":  # no .crc files beside local reports
            for _ in range(4):  # LocalFileSystem (or Hive's proxy of it) -> RawLocalFileSystem
                if fs.getClass().getName() == "org.apache.hadoop.fs.RawLocalFileSystem":
                    break
                try:
                    fs = fs.getRawFileSystem()
                except Exception:  # noqa: BLE001 - not a wrapper: write through it
                    break
        stream = fs.create(p, True)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()

    def read_bytes(self, path: str) -> bytes:
        """The whole content of the file ``path``."""
        p = self._path(path)
        stream = self._fs(p).open(p)
        try:
            return bytes(self._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()
