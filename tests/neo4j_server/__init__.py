"""Start a real Neo4j 5.26 Community server (Bolt, auth on) for tests and benchmarks.

The server runs in a JVM from Maven Central jars (see ``pom.xml`` and ``Neo4jTestServer.java``),
so the suite needs only Java 17 and Maven, not Docker or a Neo4j install. The resolved classpath
and the compiled launcher are cached under ``.build/``, keyed by a hash of their inputs, so only
the first start pays for the Maven downloads.

Fault tests stop a server and bring it back with its data: ``server.stop(keep_data=True)`` then
``server.restart()`` (same port, password and data dir), or ``start_neo4j(data_dir=...,
port=..., password=...)`` over a data dir a previous server left behind.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = ["Neo4jServer", "Neo4jUnavailable", "neo4j_or_skip", "start_neo4j"]

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
JAVA_SOURCE = HERE / "Neo4jTestServer.java"
BUILD_DIR = HERE / ".build"
READY_PREFIX = "NEO4J_READY "
HOW_TO_ENABLE = (
    "Neo4j-backed tests need Java 17+ (java, javac) and Maven (mvn) on PATH, with Maven Central "
    "reachable on the first run, e.g. `apt-get install openjdk-17-jdk-headless maven`."
)


class Neo4jUnavailable(RuntimeError):
    """The test server could not be built or started; the message says why."""


@dataclass
class Neo4jServer:
    """A running test server; ``stop()`` (or leaving the ``with`` block) ends it."""

    uri: str
    user: str
    password: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    port: int = 0
    heap: str = "1g"
    pagecache_mb: int = 256
    _stopped: bool = field(default=False, repr=False)
    _prepared: bool = field(default=False, repr=False)

    @property
    def running(self) -> bool:
        return not self._stopped and self.process.poll() is None

    def stop(self, timeout: float = 30, keep_data: bool = False) -> None:
        """Shut down cleanly (SIGTERM runs Neo4j's shutdown hook), then remove the data dir.

        With ``keep_data=True`` the data dir stays, for ``restart()``; a later ``stop()`` (or
        the exit hook) without it still removes the data dir.
        """
        if not self._stopped:
            self._stopped = True
            if self.process is not None:
                _terminate(self.process, timeout)
        if not keep_data:
            atexit.unregister(self.stop)
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def add_user(self, user: str, password: str) -> None:
        """Create (or reset) a login besides ``neo4j``; Community users may do everything.

        A restart briefly leaves ``neo4j`` with a throwaway password (see ``_launch``), and
        Neo4j locks a login out for a few seconds after repeated failures; a client that keeps
        connecting across a restart (an API under a fault test) should use its own login.
        """
        import neo4j

        with neo4j.GraphDatabase.driver(self.uri, auth=(self.user, self.password)) as driver:
            driver.execute_query(
                "CREATE OR REPLACE USER $user SET PASSWORD $password CHANGE NOT REQUIRED",
                user=user, password=password, database_="system")

    def prepare_restart(self, timeout: float = 180) -> None:
        """The slow half of ``restart()``, with the Bolt port still closed (after
        ``stop(keep_data=True)``): a JVM on a spare port moves the stored password to a
        throwaway value (see ``_launch``) and stops. ``restart()`` then only starts the server.

        Lets a fault test keep Neo4j unreachable for as long as it needs while this runs."""
        self._check_stopped_with_data()
        deadline = time.monotonic() + timeout
        try:
            _terminate(_spawn(self, _free_port(), secrets.token_urlsafe(16), deadline), 30)
        except Neo4jUnavailable:
            self.stop(keep_data=True)
            raise
        self._prepared = True

    def restart(self, timeout: float = 180) -> None:
        """Start again on the same port with the same data and password (after
        ``stop(keep_data=True)``); raise ``Neo4jUnavailable`` if it does not come up."""
        self._check_stopped_with_data()
        _launch(self, timeout, keep_data=True, rotate=not self._prepared)
        self._prepared = False

    def _check_stopped_with_data(self) -> None:
        if self.running:
            raise RuntimeError("the server is still running; stop(keep_data=True) it first")
        if not self.data_dir.is_dir():
            raise Neo4jUnavailable(f"the data dir {self.data_dir} is gone; was the server "
                                   "stopped without keep_data=True?")

    def __enter__(self) -> Neo4jServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tail(path: Path, lines: int = 40) -> str:
    """Last lines of a log, for error messages that show what went wrong."""
    try:
        with path.open(errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except OSError:
        return "(no output)"


def _require_tools() -> None:
    missing = [tool for tool in ("java", "javac", "mvn") if shutil.which(tool) is None]
    if missing:
        raise Neo4jUnavailable(f"{', '.join(missing)} not found on PATH. {HOW_TO_ENABLE}")


def _build() -> tuple[str, Path]:
    """Resolve the classpath and compile the launcher, once per pom/source version.

    Returns the classpath string (jars) and the directory holding the compiled class.
    """
    digest = hashlib.sha256(POM.read_bytes() + b"\0" + JAVA_SOURCE.read_bytes()).hexdigest()[:16]
    out = BUILD_DIR / digest
    cp_file = out / "classpath.txt"
    classes = out / "classes"
    if cp_file.is_file() and (classes / "Neo4jTestServer.class").is_file():
        classpath = cp_file.read_text().strip()
        # ~/.m2 may have been cleaned since: rebuild if any jar is gone.
        if all(Path(jar).is_file() for jar in classpath.split(os.pathsep)):
            return classpath, classes

    BUILD_DIR.mkdir(exist_ok=True)
    # Build into a private dir and rename at the end, so concurrent runs never see half a build.
    work = Path(tempfile.mkdtemp(prefix=f"{digest}-", dir=BUILD_DIR))
    mvn_log = BUILD_DIR / "mvn.log"
    with mvn_log.open("wb") as log:
        resolved = subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(POM),
                "dependency:build-classpath",
                f"-Dmdep.outputFile={work / 'classpath.txt'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    if resolved.returncode != 0 or not (work / "classpath.txt").is_file():
        shutil.rmtree(work, ignore_errors=True)
        raise Neo4jUnavailable(
            f"Maven could not resolve Neo4j (exit {resolved.returncode}); {mvn_log} ends:\n"
            f"{_tail(mvn_log)}\n{HOW_TO_ENABLE}"
        )
    classpath = (work / "classpath.txt").read_text().strip()
    compiled = subprocess.run(
        ["javac", "-d", str(work / "classes"), "-cp", classpath, str(JAVA_SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if compiled.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise Neo4jUnavailable(f"javac failed:\n{compiled.stdout}{compiled.stderr}")
    try:
        if out.exists():
            shutil.rmtree(out)  # a stale build whose jars went missing
        work.rename(out)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)  # another process finished first; use theirs
    return classpath, classes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_neo4j(
    workdir: Path | None = None,
    heap: str = "1g",
    timeout: float = 180,
    pagecache_mb: int = 256,
    *,
    data_dir: Path | None = None,
    port: int | None = None,
    password: str | None = None,
) -> Neo4jServer:
    """Build if needed and start a server; raise ``Neo4jUnavailable`` if impossible.

    By default the server is fresh and empty: a new temporary data dir under ``workdir`` (the
    system temp dir if None) on a free port with a random password. ``data_dir`` (created if
    missing) reuses a data dir a previous server left behind (``stop(keep_data=True)``); then
    ``password`` must be the one it was started with, since the server sets it on every start.
    ``port`` picks the Bolt port. The data dir is removed by ``stop()``. The server also exits by
    itself when this process dies, because it watches its stdin for EOF.
    """
    _require_tools()
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    reused = data_dir is not None
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="neo4j-test-", dir=workdir))
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
    server = Neo4jServer(
        uri="",
        user="neo4j",
        password=password or secrets.token_urlsafe(16),
        process=None,  # type: ignore[arg-type]  # set by _launch just below
        data_dir=data_dir,
        log_path=data_dir / "server.log",
        port=port or _free_port(),
        heap=heap,
        pagecache_mb=pagecache_mb,
    )
    server.uri = f"bolt://127.0.0.1:{server.port}"
    _launch(server, timeout, keep_data=reused)
    return server


def _launch(server: Neo4jServer, timeout: float, keep_data: bool, rotate: bool = True
            ) -> subprocess.Popen[bytes]:
    """Start the JVM for ``server`` (its port, data dir, password) and wait until it is ready.

    The log is appended to, so a restart keeps the earlier output. On failure the server is
    stopped, and its data dir removed unless ``keep_data``.

    The launcher sets the password on every start, and Neo4j refuses to "change" a password to
    the one it already has. So over a data dir that already has a database, a first start on a
    spare port (nobody connects there) moves the password to a throwaway value, and the real
    start on ``server.port`` moves it back to ``server.password`` (``rotate=False``: the
    first start was done already, by ``Neo4jServer.prepare_restart``).
    """
    server._stopped = False
    # Covers sessions that end without teardown; a killed parent is handled by the stdin watch.
    atexit.unregister(server.stop)
    atexit.register(server.stop)
    deadline = time.monotonic() + timeout
    try:
        if rotate and (server.data_dir / "home" / "data" / "databases" / "system").is_dir():
            rotation = _spawn(server, _free_port(), secrets.token_urlsafe(16), deadline)
            _terminate(rotation, 30)
        return _spawn(server, server.port, server.password, deadline)
    except Neo4jUnavailable:
        server.stop(keep_data=keep_data)
        raise


def _spawn(server: Neo4jServer, port: int, password: str, deadline: float
           ) -> subprocess.Popen[bytes]:
    """One JVM over ``server``'s data dir on ``port``, ready (or ``Neo4jUnavailable``)."""
    classpath, classes = _build()
    env = {**os.environ, "NEO4J_TEST_PASSWORD": password,
           "NEO4J_TEST_PAGECACHE_MB": str(server.pagecache_mb)}
    cmd = [
        "java",
        f"-Xmx{server.heap}",
        "-cp",
        f"{classes}{os.pathsep}{classpath}",
        "Neo4jTestServer",
        str(server.data_dir / "home"),
        str(port),
    ]
    log_path = server.log_path
    start_offset = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    server.process = process  # so stop() ends it whatever happens next
    while True:
        # Reading the log file (not a pipe) means the JVM can never block on a full pipe;
        # only lines written since this start count.
        with log_path.open("rb") as f:
            f.seek(start_offset)
            if any(line.startswith(READY_PREFIX.encode()) for line in f):
                return process
        if process.poll() is not None:
            problem = f"exited with code {process.returncode} before it was ready"
        elif time.monotonic() > deadline:
            problem = "was not ready within the time allowed"
        else:
            time.sleep(0.2)
            continue
        _terminate(process, 30)
        raise Neo4jUnavailable(f"Neo4j test server {problem}; its output ends:\n"
                               f"{_tail(log_path)}")


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM (Neo4j's shutdown hook runs), SIGKILL after ``timeout`` s; stdin closed."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdin:
        process.stdin.close()


def neo4j_or_skip(
    workdir: Path | None = None, heap: str = "1g", timeout: float = 180
) -> Neo4jServer:
    """Start the server for a pytest session fixture, or skip the tests that need it.

    Under CI (env CI=true/1) a missing server is an error, never a skip, so CI cannot go green
    without running the Neo4j tests.
    """
    import pytest

    try:
        return start_neo4j(workdir, heap, timeout)
    except Neo4jUnavailable as exc:
        if os.environ.get("CI", "").strip().lower() in ("true", "1"):
            raise
        hint = "" if HOW_TO_ENABLE in str(exc) else f"\n{HOW_TO_ENABLE}"
        pytest.skip(f"Neo4j test server unavailable: {exc}{hint}")
