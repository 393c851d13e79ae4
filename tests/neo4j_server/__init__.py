"""Start a real Neo4j 5.26 Community server (Bolt, auth on) for tests and benchmarks.

The server runs in a JVM from Maven Central jars (see ``pom.xml`` and ``Neo4jTestServer.java``),
so the suite needs only Java 17 and Maven, not Docker or a Neo4j install. The resolved classpath
and the compiled launcher are cached under ``.build/``, keyed by a hash of their inputs, so only
the first start pays for the Maven downloads.
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
    _stopped: bool = field(default=False, repr=False)

    def stop(self, timeout: float = 30) -> None:
        """Shut down cleanly (SIGTERM runs Neo4j's shutdown hook), then remove the data dir."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdin:
            self.process.stdin.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)

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
    workdir: Path | None = None, heap: str = "1g", timeout: float = 180, pagecache_mb: int = 256
) -> Neo4jServer:
    """Build if needed and start a fresh, empty server; raise ``Neo4jUnavailable`` if impossible.

    ``workdir`` is where the temporary data dir goes (the system temp dir if None); the data dir
    is removed by ``stop()``. The server also exits by itself when this process dies, because it
    watches its stdin for EOF.
    """
    _require_tools()
    classpath, classes = _build()
    port = _free_port()
    password = secrets.token_urlsafe(16)
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="neo4j-test-", dir=workdir))
    log_path = data_dir / "server.log"
    env = {**os.environ, "NEO4J_TEST_PASSWORD": password,
           "NEO4J_TEST_PAGECACHE_MB": str(pagecache_mb)}
    cmd = [
        "java",
        f"-Xmx{heap}",
        "-cp",
        f"{classes}{os.pathsep}{classpath}",
        "Neo4jTestServer",
        str(data_dir / "home"),
        str(port),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    server = Neo4jServer(
        uri=f"bolt://127.0.0.1:{port}",
        user="neo4j",
        password=password,
        process=process,
        data_dir=data_dir,
        log_path=log_path,
    )

    # Covers sessions that end without teardown; a killed parent is handled by the stdin watch.
    atexit.register(server.stop)

    deadline = time.monotonic() + timeout
    while True:
        # Reading the log file (not a pipe) means the JVM can never block on a full pipe.
        with log_path.open(errors="replace") as f:
            if any(line.startswith(READY_PREFIX) for line in f):
                return server
        if process.poll() is not None:
            problem = f"exited with code {process.returncode} before it was ready"
        elif time.monotonic() > deadline:
            problem = f"was not ready within {timeout:.0f} s"
        else:
            time.sleep(0.2)
            continue
        output = _tail(log_path)
        server.stop()
        raise Neo4jUnavailable(f"Neo4j test server {problem}; its output ends:\n{output}")


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
