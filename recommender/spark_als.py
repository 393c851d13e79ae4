"""ALS fitted by Spark MLlib, for histories past one machine (`shopgraph train --engine spark`).

`ALSRecommender(engine="spark")` calls `fit_factors` here instead of implicit's solver; the
factors come back into the same `ALSRecommender`, so saving, loading, fold-in and serving are
the ones of the `implicit` engine (the artifact is the same `.npz`).

What Spark is given. The same weighted history the `implicit` engine gets, turned into the
same confidences: Spark's implicit ALS (`implicitPrefs=True`) uses c = 1 + alpha * r and
p = [r > 0], so it is handed r = w (``confidence="linear"``) or r = log(1 + w / eps)
(``"log"``) with the same alpha: c is then exactly what `ALSRecommender.confidence_matrix`
builds.

Regularisation differs. implicit solves (Y'C_uY + lambda I) x_u = Y'C_u p_u; Spark scales
its `regParam` by the number of interactions of the row it solves (ALS-WR), i.e. it uses
regParam * n_u. `spark_reg_param` converts: regParam = lambda / (mean interactions per user),
so a user of average history is regularised as implicit would; benchmarks/spark_als.py
measures what that gives on ml100k-kg.

Spark is imported only here and only when a fit runs: `import recommender.als` stays cheap.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

LOG = logging.getLogger(__name__)  # progress lines; `shopgraph train` prints them
MIN_JAVA = 17  # Spark 4 runs on Java 17 or 21
INSTALL_PYSPARK = "pip install 'shopgraph[spark]' (or: pip install pyspark)"
INSTALL_JAVA = ("install a Java 17+ runtime (Debian/Ubuntu: apt-get install "
                "openjdk-17-jre-headless) or set JAVA_HOME to one")


class SparkUnavailable(RuntimeError):
    """The spark engine cannot run here: pyspark or Java missing, or no reachable master."""


def java_version(java: str) -> int | None:
    """The major version `java -version` reports (8 for "1.8.0_x"), None when unreadable."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def require_spark() -> None:
    """Fail with what to install before Spark fails with a JVM stack trace.

    Spark's own errors for a missing or old Java ("Java gateway process exited",
    UnsupportedClassVersionError) do not say what to do; this does.
    """
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise SparkUnavailable(f"the spark engine needs pyspark: {INSTALL_PYSPARK}") from exc
    home = os.environ.get("JAVA_HOME")  # what pyspark's launcher uses, else `java` on PATH
    if home:
        java = os.path.join(home, "bin", "java")
        if not os.path.isfile(java):
            raise SparkUnavailable(f"JAVA_HOME={home} has no bin/java: {INSTALL_JAVA}")
    else:
        java = shutil.which("java") or ""
        if not java:
            raise SparkUnavailable(
                f"the spark engine needs Java (no `java` on PATH): {INSTALL_JAVA}")
    version = java_version(java)
    if version is not None and version < MIN_JAVA:
        raise SparkUnavailable(f"{java} is Java {version}; Spark 4 needs Java {MIN_JAVA}+: "
                               f"{INSTALL_JAVA}")


def spark_session(master: str | None = None, threads: int = 1,
                  log: Callable[[str], None] = LOG.info,
                  conf: Mapping[str, str] | None = None) -> SparkSession:
    """The process's Spark session: `master` (a cluster URL) or local mode on `threads` cores.

    Reused across fits (tuning fits ALS twice): a JVM start costs seconds. Settings a session
    was started with win; a different `master` asked later is reported, not honoured.
    `conf` adds Spark settings (e.g. spark.driver.memory) to a new session; spark-defaults.conf
    and PYSPARK_SUBMIT_ARGS work as usual.
    """
    require_spark()
    from pyspark.sql import SparkSession

    wanted = master or f"local[{max(1, int(threads))}]"
    active = SparkSession.getActiveSession()
    if active is not None:
        if active.sparkContext.master != wanted:
            log(f"spark: reusing the running session on {active.sparkContext.master} "
                f"(asked for {wanted})")
        return active
    started = time.perf_counter()
    builder = (SparkSession.builder.master(wanted).appName("shopgraph-als")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    if wanted.startswith("local"):
        # local mode: a few small partitions; the defaults (200 shuffle partitions) cost
        # more in task overhead than the solves on one machine
        parallel = str(max(1, int(threads)))
        builder = (builder.config("spark.sql.shuffle.partitions", parallel)
                   .config("spark.default.parallelism", parallel)
                   .config("spark.ui.enabled", "false"))
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    try:
        with _quiet_pandas():
            session = builder.getOrCreate()
    except Exception as exc:  # py4j / PySparkRuntimeError: their text is a JVM stack trace
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SparkUnavailable(
            f"could not start Spark on {wanted}: {first} (is the master URL right and "
            "reachable from here? Spark's log above says why)") from exc
    session.sparkContext.setLogLevel("ERROR")
    log(f"spark: session on {session.sparkContext.master} "
        f"({session.sparkContext.defaultParallelism} cores, Spark {session.version}) in "
        f"{time.perf_counter() - started:.1f} s")
    return session


def spark_reg_param(regularization: float, user_items: sp.csr_matrix) -> float:
    """implicit's constant lambda as Spark's per-interaction regParam (see the module doc)."""
    rows = max(1, int((np.diff(user_items.indptr) > 0).sum()))
    return float(regularization) * rows / max(1, user_items.nnz)


def fit_factors(ratings: sp.csr_matrix, factors: int, regularization: float, alpha: float,
                iterations: int, seed: int | None, master: str | None = None,
                threads: int = 1, log: Callable[[str], None] = LOG.info,
                heartbeat_s: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
    """User and item factors (float32, the matrix's shape) from Spark's implicit ALS.

    `ratings` holds r_ui > 0 (c = 1 + alpha * r). Rows and columns Spark never saw (no
    interactions) get zero vectors, which score 0 for every item.
    """
    from pyspark.ml.recommendation import ALS

    ratings = sp.csr_matrix(ratings, dtype=np.float32)
    ratings.eliminate_zeros()
    if ratings.nnz == 0:
        raise ValueError("no interactions to fit")
    if (ratings.data < 0).any():
        raise ValueError("Spark's implicit ALS needs weights >= 0")
    session = spark_session(master, threads, log)
    coo = ratings.tocoo()
    frame = pd.DataFrame({"user": coo.row.astype(np.int32), "item": coo.col.astype(np.int32),
                          "rating": coo.data.astype(np.float32)})
    blocks = max(1, session.sparkContext.defaultParallelism)
    reg = spark_reg_param(regularization, ratings)
    als = ALS(rank=int(factors), maxIter=int(iterations), regParam=reg, alpha=float(alpha),
              implicitPrefs=True, nonnegative=False, userCol="user", itemCol="item",
              ratingCol="rating", numUserBlocks=blocks, numItemBlocks=blocks,
              seed=0 if seed is None else int(seed), coldStartStrategy="nan")
    log(f"spark: fitting ALS rank {factors}, {iterations} iterations, regParam {reg:.4g} "
        f"(lambda {regularization:g}), alpha {alpha:g} on {ratings.nnz:,} interactions "
        f"({ratings.shape[0]:,} x {ratings.shape[1]:,}) in {blocks} blocks")
    started = time.perf_counter()
    with _quiet_pandas(), _heartbeat(session, started, log, heartbeat_s):
        data = session.createDataFrame(frame)
        model = als.fit(data)
        users = _dense(model.userFactors.toPandas(), ratings.shape[0], factors)
        items = _dense(model.itemFactors.toPandas(), ratings.shape[1], factors)
    log(f"spark: ALS fitted in {time.perf_counter() - started:.1f} s")
    return users, items


def _dense(table: pd.DataFrame, n: int, factors: int) -> np.ndarray:
    """Spark's (id, features) rows as an (n, factors) array, zeros where no row came back."""
    out = np.zeros((n, int(factors)), dtype=np.float32)
    if len(table):
        out[table["id"].to_numpy(np.int64)] = np.stack(table["features"].to_numpy()).astype(
            np.float32)
    return out


@contextmanager
def _quiet_pandas() -> Iterator[None]:
    """pyspark warns on every conversion that it does not yet support pandas 3; the
    conversions used here (numeric columns, float arrays) are covered by the tests."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not yet fully support pandas",
                                category=FutureWarning)
        warnings.filterwarnings("ignore", message="The copy keyword is deprecated",
                                module="pyspark")
        yield


@contextmanager
def _heartbeat(session: SparkSession, started: float, log: Callable[[str], None],
               every: float) -> Iterator[None]:
    """Log Spark's progress (active stage, tasks done) every `every` seconds of a long fit."""
    stop = threading.Event()
    tracker = session.sparkContext.statusTracker()

    def beat() -> None:
        while not stop.wait(every):
            jobs = [tracker.getJobInfo(j) for j in tracker.getJobIdsForGroup()]
            done = sum(1 for job in jobs if job is not None and job.status == "SUCCEEDED")
            stages = [tracker.getStageInfo(s) for s in tracker.getActiveStageIds()]
            busy = ", ".join(f"stage {s.stageId} running ({s.numCompletedTasks}/{s.numTasks} "
                             "tasks)" for s in stages if s is not None) or "between stages"
            log(f"spark: {time.perf_counter() - started:.0f} s, {done} jobs done, {busy}")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
