"""The resident engine under faults, interrupts, hostile peers and locked-down settings: each
failure mode produced on purpose, each test able to fail for its reason (README "How a fit
runs")."""

import json
import logging
import signal
import socket
import threading
import time

import numpy as np
import pytest

from spark_gmm import GaussianMixture
from spark_gmm.engine import resident
from spark_gmm.engine.channel import HANDSHAKE_SECONDS, Channel, ChannelError, connect
from spark_gmm.engine.driver import DRIVER_MAX_BYTES_CONF
from spark_gmm.engine.resident import (
    CONNECT_TIMEOUT_CONF,
    MAX_PENDING_HANDSHAKES,
    MAX_TASKS_CONF,
    PASS_TIMEOUT_CONF,
    PORT_CONF,
    ResidentEngine,
    ResidentFailure,
    _Coordinator,
)
from tests.datasets import blobs
from tests.tcp_proxy import free_port, intercept

KEY = b"k" * 32
FIT = dict(k=3, seed=2, maxIter=12, tol=0.0, covarianceType="full")


@pytest.fixture(scope="module")
def data(spark):
    X, _ = blobs(300, 3, k=3, separation=3.0, seed=11)
    df = (
        spark.createDataFrame([([float(v) for v in x],) for x in X], "features array<double>")
        .repartition(4)
        .cache()
    )
    df.count()
    yield df
    df.unpersist()


@pytest.fixture(scope="module")
def reference(data):
    """An undisturbed fit of FIT on the resident engine."""
    return _facts(GaussianMixture(engine="resident", **FIT).fit(data))


@pytest.fixture(autouse=True, scope="module")
def no_driver_engine(spark):
    """engine='auto' here chooses between the resident engine and its fallback, as it does
    for tables beyond the driver engine's limit: the limit is 0 in this module."""
    spark.conf.set(DRIVER_MAX_BYTES_CONF, "0")
    yield
    spark.conf.unset(DRIVER_MAX_BYTES_CONF)


@pytest.fixture(autouse=True)
def fresh_session_memory(monkeypatch):
    """No test inherits another's 'unreachable' verdict for the session, nor finds its
    fallback reason already said by the process."""
    from spark_gmm.engine import choose

    monkeypatch.setattr(resident, "_UNREACHABLE", {})
    monkeypatch.setattr(choose, "_SAID", set())


def _facts(model):
    return {
        "weights": np.asarray(model.weights),
        "means": model.means,
        "covariances": model.covariances,
        "history": np.asarray(model.summary.logLikelihoodHistory),
    }


def _assert_identical(a, b):
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _with_conf(monkeypatch, values: dict):
    """Spark settings that cannot be changed at run time (static or core), as the engine
    reads them (spark_conf.conf_value, which the engines import)."""
    from spark_gmm.engine import spark_conf

    original = spark_conf.conf_value

    def conf_value(spark, key):
        return values[key] if key in values else original(spark, key)

    for module in (spark_conf, resident):
        monkeypatch.setattr(module, "conf_value", conf_value)


def _on_pass(monkeypatch, number: int, action):
    """Runs ``action(engine)`` before the resident engine's ``number``-th statistics pass."""
    original = ResidentEngine.run
    count = {"n": 0}

    def run(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] == number:
            action(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ResidentEngine, "run", run)


def _fit_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("spark_gmm-resident")]


def _assert_nothing_left(spark, coordinators, seconds=15.0):
    """No thread, listening socket or running job of the resident fits left (within
    ``seconds``: Spark ends cancelled tasks asynchronously)."""
    tracker = spark.sparkContext.statusTracker()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _fit_threads() and not tracker.getActiveJobsIds():
            break
        time.sleep(0.2)
    assert _fit_threads() == []
    assert tracker.getActiveJobsIds() == []
    for coordinator in coordinators:
        assert coordinator.server.fileno() == -1  # closed
        assert coordinator.threads() == 0


# ---------------------------------------------------------------------- the channel


def _channel_pair(encrypt: bool):
    a, b = socket.socketpair()
    k1, k2 = b"1" * 32, b"2" * 32
    return Channel(a, k1, k2, encrypt), Channel(b, k2, k1, encrypt), a, b


@pytest.mark.parametrize("encrypt", [False, True])
def test_channel_refuses_tampered_and_replayed_messages(encrypt):
    sender, receiver, raw_sender, _ = _channel_pair(encrypt)
    sender.send(b"statistics")
    assert receiver.recv(100, timeout=5) == b"statistics"
    sealed = sender._seal(b"more statistics")
    raw_sender.sendall(sealed)  # the genuine message, then the same bytes again (a replay)
    raw_sender.sendall(sealed)
    assert receiver.recv(100, timeout=5) == b"more statistics"
    with pytest.raises(ChannelError, match="failed its authentication"):
        receiver.recv(100, timeout=5)
    sender, receiver, raw_sender, _ = _channel_pair(encrypt)
    tampered = bytearray(sender._seal(b"statistics"))
    tampered[10] ^= 1
    raw_sender.sendall(bytes(tampered))
    with pytest.raises(ChannelError, match="failed its authentication"):
        receiver.recv(100, timeout=5)


def test_channel_bounds_message_size():
    sender, receiver, _, _ = _channel_pair(False)
    sender.send(b"x" * 101)
    with pytest.raises(ChannelError, match="beyond the 100 expected"):
        receiver.recv(100, timeout=5)


@pytest.mark.parametrize("encrypt", [False, True])
def test_channel_encrypts_only_when_asked(encrypt):
    sender, _, _, raw_receiver = _channel_pair(encrypt)
    sender.send(b"spark_gmm.kernel accumulate_stats")
    raw_receiver.settimeout(5)
    wire = raw_receiver.recv(4096)
    assert (b"accumulate_stats" in wire) is (not encrypt)


def test_poll_reads_a_message_sent_in_pieces():
    sender, receiver, raw_sender, _ = _channel_pair(False)
    sealed = sender._seal(b"a message in pieces")
    raw_sender.sendall(sealed[:5])
    assert receiver.poll(100) is None  # half a header: not a message yet, and no blocking
    raw_sender.sendall(sealed[5:20])
    assert receiver.poll(100) is None
    raw_sender.sendall(sealed[20:])
    assert receiver.poll(100) == b"a message in pieces"
    raw_sender.close()
    with pytest.raises(EOFError):
        receiver.poll(100)


# ---------------------------------------------------------------------- the coordinator


def _coordinator(**kwargs):
    return _Coordinator("127.0.0.1", (0, 0), KEY, False, **kwargs)


def test_coordinator_authenticates_and_refuses_malformed_hellos():
    coordinator = _coordinator()
    try:
        with pytest.raises((EOFError, ConnectionError)):  # cut off before its proof
            connect(("127.0.0.1", coordinator.port), b"x" * 32, False, 5)
        bad = connect(("127.0.0.1", coordinator.port), KEY, False, 5)
        bad.send(b"not json")  # authenticated but malformed: refused
        good = connect(("127.0.0.1", coordinator.port), KEY, False, 5)
        good.send(json.dumps({"partition": 0, "task": 7}).encode())
        hello, channel = coordinator.take(timeout=10)
        assert hello == {"partition": 0, "task": 7}
        deadline = time.monotonic() + 10
        while coordinator.refused < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert coordinator.refused == 2 and coordinator.take(timeout=0.1) is None
        channel.close()
        good.close()
        bad.close()
    finally:
        coordinator.close()


def test_a_silent_peer_is_cut_off_after_the_handshake_time():
    coordinator = _coordinator()
    try:
        raw = socket.create_connection(("127.0.0.1", coordinator.port))
        raw.settimeout(HANDSHAKE_SECONDS + 10)
        started = time.monotonic()
        received = b""
        while True:  # the challenge, then nothing: the coordinator closes the connection
            chunk = raw.recv(4096)
            if not chunk:
                break
            received += chunk
        waited = time.monotonic() - started
        assert received.startswith(b"spark_gmm-resident-1")
        assert HANDSHAKE_SECONDS - 0.5 <= waited <= HANDSHAKE_SECONDS + 3, waited
        assert coordinator.refused == 1 and coordinator.threads() == 1  # the accept thread
    finally:
        coordinator.close()


def test_1000_unauthenticated_attempts_keep_threads_bounded():
    coordinator = _coordinator()
    peak = {"threads": 0}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak["threads"] = max(peak["threads"], coordinator.threads())
            time.sleep(0.001)

    def attack(n):
        for _ in range(n):
            try:
                with socket.create_connection(("127.0.0.1", coordinator.port), timeout=10) as s:
                    s.sendall(b"\0" * 64)  # a nonce and a wrong answer
                    s.recv(64)
            except OSError:
                pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # 1,000 attempts from 20 connections at a time, plus 30 that never speak
        silent = [socket.create_connection(("127.0.0.1", coordinator.port)) for _ in range(30)]
        attackers = [threading.Thread(target=attack, args=(50,)) for _ in range(20)]
        for t in attackers:
            t.start()
        for t in attackers:
            t.join()
        # a worker with the key still gets through (retrying while the bound is full)
        deadline = time.monotonic() + HANDSHAKE_SECONDS + 10
        while True:
            try:
                good = connect(("127.0.0.1", coordinator.port), KEY, False, 5)
                good.send(json.dumps({"partition": 0, "task": 1}).encode())
                break
            except (OSError, EOFError):
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert coordinator.take(timeout=10)[0] == {"partition": 0, "task": 1}
        for s in silent:
            s.close()
        good.close()
    finally:
        stop.set()
        watcher.join()
        coordinator.close()
    assert peak["threads"] <= MAX_PENDING_HANDSHAKES + 1, peak
    assert coordinator.refused >= 1000


# ---------------------------------------------------------------------- a fit under attack


def test_fit_unharmed_by_1000_unauthenticated_attempts(spark, data, reference, monkeypatch):
    created = intercept(monkeypatch)  # a proxy that forwards faithfully
    attempts = {"n": 0}

    def flood(engine):
        port = created[-1].real_port  # the coordinator itself

        def attack():
            for _ in range(125):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                        s.sendall(b"\1" * 64)
                        s.recv(64)
                    attempts["n"] += 1
                except OSError:
                    attempts["n"] += 1

        threads = [threading.Thread(target=attack) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    _on_pass(monkeypatch, 4, flood)
    model = GaussianMixture(engine="resident", **FIT).fit(data)
    assert attempts["n"] == 1000
    assert created[-1].refused >= 1000 - MAX_PENDING_HANDSHAKES
    _assert_identical(_facts(model), reference)


@pytest.mark.parametrize("how", ["tamper", "replay"])
def test_a_tampered_or_replayed_message_ends_the_fit(spark, data, monkeypatch, how):
    def tamper(index, chunk):  # a task's 6th write: a statistics reply of the EM passes
        if index != 5:
            return [chunk]
        if how == "replay":
            return [chunk, chunk]
        return [chunk[:-1] + bytes([chunk[-1] ^ 1])]

    created = intercept(monkeypatch, tamper_upstream=tamper)
    with pytest.raises(ResidentFailure, match="failed its authentication"):
        GaussianMixture(engine="resident", **FIT).fit(data)
    _assert_nothing_left(spark, created)


def test_encrypted_end_to_end_where_spark_encrypts(spark, data, reference, monkeypatch):
    created = intercept(monkeypatch)
    plain = GaussianMixture(engine="resident", **FIT).fit(data)
    assert b"accumulate_stats" in bytes(created[-1].proxy.downstream)  # the control
    _with_conf(monkeypatch, {"spark.network.crypto.enabled": "true"})
    encrypted = GaussianMixture(engine="resident", **FIT).fit(data)
    wire = bytes(created[-1].proxy.downstream) + bytes(created[-1].proxy.upstream)
    assert created[-1].encrypt and len(wire) > 10_000
    assert b"accumulate_stats" not in wire and b"spark_gmm.kernel" not in wire
    _assert_identical(_facts(plain), reference)
    _assert_identical(_facts(encrypted), reference)


def test_no_encryption_available_falls_back_or_fails_clearly(spark, data, monkeypatch, caplog):
    _with_conf(monkeypatch, {"spark.ssl.enabled": "true"})
    monkeypatch.setattr(resident, "encryption_available", lambda: "no cryptography here")
    with caplog.at_level(logging.WARNING, logger="spark_gmm"):
        model = GaussianMixture(**FIT).fit(data)
    assert model.summary.engine == "jobPerPass"
    assert any(
        "spark.ssl.enabled" in r.getMessage() and "no cryptography here" in r.getMessage()
        for r in caplog.records
    )
    with pytest.raises(RuntimeError, match="engine='resident' cannot run here: Spark encrypts"):
        GaussianMixture(engine="resident", **FIT).fit(data)


# ---------------------------------------------------------------------- start-up


def test_unreachable_coordinator_falls_back_fast_then_at_once(
    spark, data, reference, monkeypatch, caplog
):
    created = intercept(monkeypatch, dead_port=free_port())
    spark.conf.set(CONNECT_TIMEOUT_CONF, "3")
    try:
        with caplog.at_level(logging.WARNING, logger="spark_gmm"):
            started = time.monotonic()
            first = GaussianMixture(**FIT).fit(data)
            first_seconds = time.monotonic() - started
            started = time.monotonic()
            second = GaussianMixture(**FIT).fit(data)
            second_seconds = time.monotonic() - started
        with pytest.raises(
            RuntimeError,
            match="engine='resident' cannot run here: .*could not reach the coordinator",
        ):
            GaussianMixture(engine="resident", **FIT).fit(data)
    finally:
        spark.conf.unset(CONNECT_TIMEOUT_CONF)
    assert first.summary.engine == second.summary.engine == "jobPerPass"
    assert len(created) == 1  # the second fit did not try again
    said = [r.getMessage() for r in caplog.records if "fell back" in r.getMessage()]
    assert len(said) == 1 and "could not reach the coordinator" in said[0], said
    # 3 s for the tasks to give up, plus the fit on the other engine; the second no wait
    assert first_seconds < 3 + 20, first_seconds
    assert second_seconds < first_seconds - 2, (first_seconds, second_seconds)
    _assert_nothing_left(spark, created)


@pytest.mark.parametrize("problem", ["port taken", "unresolvable host"])
def test_start_up_errors_fall_back_or_fail_clearly(spark, data, monkeypatch, caplog, problem):
    taken = socket.create_server(("127.0.0.1", 0))
    if problem == "port taken":
        spark.conf.set(PORT_CONF, str(taken.getsockname()[1]))
        message = "no free port for the coordinator"
    else:
        _with_conf(
            monkeypatch,
            {
                "spark.driver.host": "no-such-host.invalid",
                "spark.driver.bindAddress": "no-such-host.invalid",
            },
        )
        message = "could not start: gaierror"
    try:
        with caplog.at_level(logging.WARNING, logger="spark_gmm"):
            model = GaussianMixture(**FIT).fit(data)
        with pytest.raises(RuntimeError, match=f"engine='resident' cannot run here: .*{message}"):
            GaussianMixture(engine="resident", **FIT).fit(data)
    finally:
        spark.conf.unset(PORT_CONF)
        taken.close()
    assert model.summary.engine == "jobPerPass"
    assert any(message in r.getMessage() for r in caplog.records)


def test_ipv6_driver_host(spark, data, reference, monkeypatch):
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    _with_conf(monkeypatch, {"spark.driver.host": "::1", "spark.driver.bindAddress": "::1"})
    model = GaussianMixture(engine="resident", **FIT).fit(data)
    assert model.summary.engine == "resident"
    _assert_identical(_facts(model), reference)


def test_port_range_and_max_tasks(spark, data, reference, monkeypatch, caplog):
    created = intercept(monkeypatch)
    taken = socket.create_server(("127.0.0.1", 0))
    first = taken.getsockname()[1]
    spark.conf.set(PORT_CONF, f"{first}-{first + 20}")
    spark.conf.set(MAX_TASKS_CONF, "1")
    try:
        with caplog.at_level(logging.INFO, logger="spark_gmm"):
            model = GaussianMixture(engine="resident", **FIT).fit(data)
    finally:
        spark.conf.unset(PORT_CONF)
        spark.conf.unset(MAX_TASKS_CONF)
        taken.close()
    assert first < created[-1].real_port <= first + 20
    assert any("held in 1 barrier tasks" in r.getMessage() for r in caplog.records)
    # one task holding all four partitions sums them in the same order
    _assert_identical(_facts(model), reference)


@pytest.mark.parametrize(
    "key, value, message",
    [
        (PORT_CONF, "80-70", "must be a port"),
        (PORT_CONF, "http", "must be a port"),
        (MAX_TASKS_CONF, "0", "must be a whole number >= 1"),
        (CONNECT_TIMEOUT_CONF, "-1", "must be > 0 seconds"),
    ],
)
def test_bad_settings_are_named(spark, data, key, value, message):
    spark.conf.set(key, value)
    try:
        with pytest.raises(ValueError, match=f"{key} {message}"):
            GaussianMixture(**FIT).fit(data)
    finally:
        spark.conf.unset(key)


def test_memory_estimate_falls_back_with_figures(spark, data, monkeypatch, caplog):
    _with_conf(monkeypatch, {"spark.executor.pyspark.memory": "1k"})
    with caplog.at_level(logging.WARNING, logger="spark_gmm"):
        model = GaussianMixture(**FIT).fit(data)
    assert model.summary.engine == "jobPerPass"
    said = [r.getMessage() for r in caplog.records if "fell back" in r.getMessage()]
    assert (
        said
        and "MB at its peak while reading" in said[0]
        and "spark.executor.pyspark.memory" in said[0]
    ), said


# ---------------------------------------------------------------------- cancellation


def test_ctrl_c_mid_fit_cancels_and_leaves_nothing(spark, data, reference, monkeypatch):
    created = intercept(monkeypatch)
    _on_pass(monkeypatch, 5, lambda engine: signal.raise_signal(signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        GaussianMixture(engine="resident", **FIT).fit(data)
    _assert_nothing_left(spark, created)
    monkeypatch.undo()  # the next fit as a user would run it
    _assert_identical(_facts(GaussianMixture(engine="resident", **FIT).fit(data)), reference)


def test_an_error_in_the_driver_cancels_and_leaves_nothing(spark, data, monkeypatch):
    created = intercept(monkeypatch)

    def boom(engine):
        raise ZeroDivisionError("the driver's own code failed")

    _on_pass(monkeypatch, 5, boom)
    started = time.monotonic()
    with pytest.raises(ZeroDivisionError):
        GaussianMixture(engine="resident", **FIT).fit(data)
    assert time.monotonic() - started < 20  # no wait for the job to end by itself
    _assert_nothing_left(spark, created)


def test_a_cancelled_job_group_ends_the_fit(spark, data, reference, monkeypatch):
    created = intercept(monkeypatch)
    sc = spark.sparkContext

    def cancel(engine):  # and wait until Spark has ended the job: the fit must notice
        sc.cancelJobGroup("spark_gmm-test-cancel")
        assert engine._job_done.wait(20)

    _on_pass(monkeypatch, 5, cancel)
    sc.setJobGroup("spark_gmm-test-cancel", "a fit cancelled by its group")
    try:
        with pytest.raises(ResidentFailure, match="cancel"):
            GaussianMixture(engine="resident", **FIT).fit(data)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    _assert_nothing_left(spark, created)
    monkeypatch.undo()
    _assert_identical(_facts(GaussianMixture(engine="resident", **FIT).fit(data)), reference)


def test_idle_workers_end_their_tasks(spark, data, monkeypatch):
    """A driver that stops sending (hung or gone without closing) does not hold the slots
    for ever: without a command for pass + connect timeout, the workers end their tasks."""
    spark.conf.set(PASS_TIMEOUT_CONF, "2")
    spark.conf.set(CONNECT_TIMEOUT_CONF, "2")
    seen = {}

    def go_quiet(engine):
        deadline = time.monotonic() + 20
        while not engine._job_done.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)
        seen.update(
            done=engine._job_done.is_set(),
            error=engine._job_error,
            waited=20 - (deadline - time.monotonic()),
        )

    _on_pass(monkeypatch, 3, go_quiet)
    try:
        with pytest.raises(ResidentFailure, match="the barrier stage ended"):
            GaussianMixture(engine="resident", **FIT).fit(data)
    finally:
        spark.conf.unset(PASS_TIMEOUT_CONF)
        spark.conf.unset(CONNECT_TIMEOUT_CONF)
    assert seen["done"] and seen["error"] is None, seen  # ended by the workers, not cancelled
    assert 3 <= seen["waited"] < 15, seen


# ---------------------------------------------------------------------- integrity


def test_held_rows_that_differ_from_the_input_are_an_error(spark, data, monkeypatch):
    original = ResidentEngine.__init__

    def miscounted(self, rows, n_rows, *args, **kwargs):
        original(self, rows, n_rows + 1, *args, **kwargs)  # as if validation saw another row

    monkeypatch.setattr(ResidentEngine, "__init__", miscounted)
    with pytest.raises(
        ResidentFailure,
        match=r"the workers hold 900 rows .* but validation "
        r"counted 901 rows",
    ):
        GaussianMixture(**FIT).fit(data)  # not a fallback: the input itself is in question


def test_a_partition_held_twice_or_missing_is_an_error():
    engine = ResidentEngine.__new__(ResidentEngine)
    engine._pids, engine._rows = {}, {}
    engine.n_rows, engine.total_weight = 20, 20.0
    engine._cancel = lambda: None
    first = {"pids": [0, 3], "rows": [5, 5], "weights": [5.0, 5.0], "bytes": 160}
    second = {"pids": [3, 5], "rows": [5, 5], "weights": [5.0, 5.0], "bytes": 160}
    with pytest.raises(ResidentFailure, match="input partition 3 is held by workers 0 and 1"):
        engine._check_load(
            {0: json.dumps(first).encode(), 1: json.dumps(second).encode()}, first=True
        )
    engine._pids = {0: [0, 3]}
    engine.scale = None
    engine.data_passes = 0
    from spark_gmm.engine.resident_worker import encode_reply

    engine._exchange = lambda *args: {0: encode_reply(b"S", [(0, np.ones(4))])}
    with pytest.raises(ResidentFailure, match=r"no statistics for input partition\(s\) \[3\]"):
        engine.run([], "a pass", size=4)
    engine._exchange = lambda *args: {0: encode_reply(b"S", [(0, np.ones(4)), (0, np.ones(4))])}
    with pytest.raises(ResidentFailure, match="malformed reply"):
        engine.run([], "a pass", size=4)


# ---------------------------------------------------------------------- sharing the cluster


def test_two_fits_at_once_and_a_parallel_cross_validator(spark, data, reference):
    """Each resident fit takes every slot (spark.gmm.resident.maxTasks unset): a second one
    waits for the first's stage and both give the undisturbed answer; so do the candidate
    fits of CrossValidator(parallelism=2)."""
    from pyspark.ml.tuning import CrossValidator, ParamGridBuilder

    from spark_gmm.selection import GaussianMixtureEvaluator

    results, errors = {}, []

    def fit(name):
        try:
            results[name] = _facts(GaussianMixture(engine="resident", **FIT).fit(data))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=fit, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and set(results) == {"a", "b"}, errors
    for facts in results.values():
        _assert_identical(facts, reference)

    gm = GaussianMixture(logLikelihoodCol="logLikelihood", seed=1, maxIter=20, engine="resident")
    grid = ParamGridBuilder().addGrid(gm.k, [1, 2, 3]).build()
    metrics = []
    for parallelism in (1, 2):
        cv = CrossValidator(
            estimator=gm,
            estimatorParamMaps=grid,
            numFolds=2,
            seed=7,
            parallelism=parallelism,
            evaluator=GaussianMixtureEvaluator(metricName="logLikelihood"),
        )
        metrics.append(cv.fit(data).avgMetrics)
    assert metrics[0] == metrics[1]


@pytest.mark.slow
def test_encrypted_in_a_session_where_spark_encrypts(run_json_script, tmp_path):
    """A real session with spark.authenticate and spark.network.crypto.enabled (settings
    fixed at start-up, so in a subprocess): the resident fit runs, its channel encrypted."""
    from tests.conftest import SCRIPTS_DIR

    got = run_json_script(SCRIPTS_DIR / "encrypted_fit.py", out=tmp_path / "encrypted.json")
    assert got["sparkEncrypts"] == "true"
    assert got["engine"] == "resident" and got["channelEncrypted"] is True
    assert got["wireBytes"] > 10_000 and got["commandsInClear"] is False


# ---------------------------------------------------------------------- the task side


class _FakeContext:
    def partitionId(self):
        return 0

    def taskAttemptId(self):
        return 42


def _task(monkeypatch, coordinator, idle_timeout=60.0):
    """A barrier task's function on this thread, against ``coordinator``; returns a thread
    running it and where its outcome goes."""
    import pyarrow as pa
    import pyspark

    from spark_gmm.engine.blocks import FEATURES, WEIGHT
    from spark_gmm.engine.resident_worker import WorkerSettings, worker_function

    monkeypatch.setattr(pyspark.TaskContext, "get", classmethod(lambda cls: _FakeContext()))
    run = worker_function(
        WorkerSettings(
            ("127.0.0.1", coordinator.port),
            KEY,
            False,
            2,
            connect_timeout=10,
            idle_timeout=idle_timeout,
        )
    )
    batch = pa.RecordBatch.from_pydict(
        {
            "pid": pa.array([0, 0], pa.int32()),
            FEATURES: pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float64())),
            WEIGHT: pa.array([1.0, 1.0]),
        }
    )
    outcome = {}

    def body():
        try:
            outcome["rows"] = [b.to_pylist() for b in run(iter([batch]))]
        except BaseException as exc:  # the task's failure, as Spark would see it
            outcome["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    return thread, outcome


def test_a_worker_the_driver_drops_fails_its_task(monkeypatch):
    """When the driver drops a worker (another task of its stage attempt was lost), the task
    must fail, not finish: a barrier task that succeeds keeps its shuffle output, and Spark
    then reruns only the failed tasks, too few for the coordinator."""
    coordinator = _coordinator()
    try:
        thread, outcome = _task(monkeypatch, coordinator)
        hello, channel = coordinator.take(timeout=20)
        assert hello == {"partition": 0, "task": 42}
        assert json.loads(channel.recv(1 << 20, timeout=20))["rows"] == [2]
        channel.close()  # dropped
        thread.join(20)
    finally:
        coordinator.close()
    assert "rows" not in outcome
    assert isinstance(outcome["error"], RuntimeError)
    assert "the driver closed the connection" in str(outcome["error"])


def test_an_idle_or_unreachable_worker_ends_its_task_saying_why(monkeypatch):
    coordinator = _coordinator()
    try:
        thread, outcome = _task(monkeypatch, coordinator, idle_timeout=1.0)
        _, channel = coordinator.take(timeout=20)
        channel.recv(1 << 20, timeout=20)
        thread.join(20)  # no command for a second: the task ends normally
        assert outcome == {"rows": [[{"error": ""}]]}
        channel.close()
    finally:
        coordinator.close()
    thread, outcome = _task(monkeypatch, coordinator)  # closed: nothing listens there
    thread.join(30)
    assert outcome["rows"][0][0]["error"].startswith(
        f"no coordinator reachable at 127.0.0.1:{coordinator.port} within 10 s"
    )


# ---------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    "mode, said",
    [
        ("memory-error-while-loading", "MemoryError while holding its rows"),
        ("exit-while-loading", "workers were lost twice while reading their rows"),
    ],
)
def test_a_worker_that_cannot_hold_its_rows_names_the_setting(
    spark, data, monkeypatch, caplog, mode, said
):
    """Task 0's worker runs out of memory (MemoryError) or is killed (as by the OOM killer)
    while reading its rows, at every attempt: after at most one retry of the stage, an error
    naming the setting to raise (under auto: the fit falls back, saying so)."""
    monkeypatch.setenv("SPARK_GMM_FAULT_INJECTION", mode)
    attempts = []
    original = resident._Coordinator.take

    def take(self, timeout):
        item = original(self, timeout)
        if item is not None:
            attempts.append(item[0]["task"])
        return item

    monkeypatch.setattr(resident._Coordinator, "take", take)
    with pytest.raises(
        RuntimeError,
        match=f"engine='resident' cannot run here: .*{said}.*spark.executor.pyspark.memory",
    ):
        GaussianMixture(engine="resident", **FIT).fit(data)
    assert len(attempts) <= 4, attempts  # two tasks, at most two attempts of the stage
    with caplog.at_level(logging.WARNING, logger="spark_gmm"):
        model = GaussianMixture(**FIT).fit(data)
    assert model.summary.engine == "jobPerPass"
    assert any(said in r.getMessage() for r in caplog.records)


def test_poll_returns_messages_buffered_with_an_earlier_one():
    """Two messages read in one go: the second is served from the buffer, and has_message
    says so (a poll of the socket would not show it)."""
    sender, receiver, raw_sender, _ = _channel_pair(False)
    raw_sender.sendall(sender._seal(b"first") + sender._seal(b"second"))
    assert receiver.recv(100, timeout=5) == b"first"
    assert receiver.has_message()
    assert receiver.poll(100) == b"second" and not receiver.has_message()
