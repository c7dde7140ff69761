"""Servers of our own for fault and pooler tests: a private PostgreSQL to stop, crash and
restart, and PgBouncer in transaction mode in front of any server on loopback.

The shared server on 127.0.0.1:5432 must never be stopped, so tests that need to break a
server start one here. Everything listens on 127.0.0.1 only, on a free port, in a temporary
directory owned by the ``postgres`` system user: initdb, postgres and pgbouncer refuse to run
as root, so when we are root they run as that user. Linux only (process groups are read from /proc).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, TypeVar

import asyncpg

__all__ = [
    "LOOPBACK",
    "PgBouncer",
    "PrivatePostgres",
    "StopMode",
    "free_port",
    "pgbouncer_path",
    "postgres_bindir",
]

LOOPBACK = "127.0.0.1"
OWNER = "postgres"
"""The system user the servers run as when we are root."""
StopMode = Literal["fast", "immediate"]
_TIMEOUT = 30.0
_S = TypeVar("_S", bound="_LoopbackServer")


def free_port() -> int:
    """A TCP port on the loopback address that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def postgres_bindir() -> Path:
    """The directory of ``initdb`` and ``postgres``: ``pg_config --bindir`` when it has
    the server, else the newest ``/usr/lib/postgresql/<version>/bin`` (Debian's layout)."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        candidates.append(Path(found.stdout.strip()))
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: [int(part) for part in path.parent.name.split(".") if part.isdigit()],
        reverse=True,
    )
    for bindir in candidates:
        if (bindir / "postgres").is_file():
            return bindir
    raise FileNotFoundError(
        "no PostgreSQL server binaries (initdb, postgres): install Debian's postgresql-15"
    )


def pgbouncer_path() -> Path:
    """The ``pgbouncer`` executable (Debian puts it in /usr/sbin, off a user's PATH)."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if found is None:
        raise FileNotFoundError("no pgbouncer executable: install Debian's pgbouncer")
    return Path(found)


def _as_owner() -> bool:
    return os.geteuid() == 0


def _spawn(args: Sequence[str], cwd: Path, output: int | IO[str]) -> subprocess.Popen[str]:
    """Start a program as the owner of the servers' files (``postgres`` when we are root)."""
    owner = OWNER if _as_owner() else None
    return subprocess.Popen(
        list(args),
        cwd=cwd,
        user=owner,
        group=owner,
        extra_groups=[] if owner else None,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _run(args: Sequence[str], cwd: Path) -> None:
    """Run a program to its end as the owner; on failure, raise with its output."""
    process = _spawn(args, cwd, subprocess.PIPE)
    output, _ = process.communicate(timeout=2 * _TIMEOUT)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({process.returncode}):\n{output}")


def _tail(log: Path | None, lines: int = 20) -> str:
    if log is None or not log.is_file():
        return ""
    return f"--- {log} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _wait_until(ready: Callable[[], bool], what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + _TIMEOUT
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {_TIMEOUT:.0f} s\n{_tail(log)}")
        time.sleep(0.02)


def _end(process: subprocess.Popen[str], signum: signal.Signals) -> None:
    """Ask a server to stop and reap it; if it has not stopped in time, kill it and raise."""
    process.send_signal(signum)
    try:
        process.wait(timeout=_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise TimeoutError(f"{process.args!r} ignored {signum.name} for {_TIMEOUT:.0f} s") from None


def _processes() -> dict[int, tuple[str, int]]:
    """Every process's state and parent PID, from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        found[int(stat.parent.name)] = (state, int(ppid))
    return found


def _any_alive(pids: set[int]) -> bool:
    """Whether any of the processes still runs (zombies do not count: PID 1 may be slow to reap
    them, and they hold neither ports nor shared memory)."""
    return any(state != "Z" for pid, (state, _) in _processes().items() if pid in pids)


class _LoopbackServer:
    """What both servers share: a free loopback port, a temporary directory owned by the
    servers' user (removed on exit, whatever happened), and the URLs to reach them."""

    _prefix = "convostore-server-"

    def __init__(self, user: str, database: str) -> None:
        self.port = free_port()
        self.user = user
        self.database = database
        self._root: Path | None = None

    def url_for(self, database: str) -> str:
        """A SQLAlchemy URL (asyncpg driver) for one database behind this server."""
        return f"postgresql+asyncpg://{self.user}@{LOOPBACK}:{self.port}/{database}"

    def dsn_for(self, database: str) -> str:
        """An asyncpg/libpq DSN for one database behind this server."""
        return f"postgresql://{self.user}@{LOOPBACK}:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.database)

    def _path(self, name: str) -> Path:
        if self._root is None:
            raise RuntimeError(f"{type(self).__name__} is used outside its with block")
        return self._root / name

    def __enter__(self: _S) -> _S:
        self._root = Path(tempfile.mkdtemp(prefix=self._prefix))
        if _as_owner():
            owner = pwd.getpwnam(OWNER)
            os.chown(self._root, owner.pw_uid, owner.pw_gid)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server if it runs and remove its directory."""
        if self._root is None:
            return
        try:
            self._teardown()
        finally:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def _setup(self) -> None:
        raise NotImplementedError

    def _teardown(self) -> None:
        raise NotImplementedError


class PrivatePostgres(_LoopbackServer):
    """A PostgreSQL server of our own (trust auth, user ``postgres``, fsync off), to stop, crash
    and restart at will. ``with PrivatePostgres() as server:`` creates and starts it; leaving
    the block stops it and deletes its data. The methods block: from async code that must keep
    running meanwhile, call them through ``asyncio.to_thread``.

    The postmaster is our own child rather than pg_ctl's: pg_ctl leaves it to PID 1, which may
    not reap it for a while after a crash, and the zombie's PID in the lock files then makes the
    next start refuse."""

    _prefix = "convostore-pg-"

    def __init__(self) -> None:
        super().__init__("postgres", "postgres")
        self._bindir = postgres_bindir()
        self._postmaster: subprocess.Popen[str] | None = None

    def _setup(self) -> None:
        initdb = [str(self._bindir / "initdb"), "-D", str(self._path("data")), "-U", self.user]
        _run([*initdb, "-A", "trust", "--no-locale", "-E", "UTF8", "--no-sync"], self._path(""))
        settings = {
            "listen_addresses": f"'{LOOPBACK}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self._path('')}'",
            "max_connections": "100",
            "shared_buffers": "16MB",
            "fsync": "off",
        }
        with self._path("data/postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        self.start()

    def start(self) -> None:
        """Start the server and wait until it accepts connections (after a crash, recovery
        runs first)."""
        if self._postmaster is not None:
            raise RuntimeError("the server is already running")
        log, pidfile = self._path("server.log"), self._path("data/postmaster.pid")
        with log.open("a") as output:
            postmaster = _spawn(
                [str(self._bindir / "postgres"), "-D", str(self._path("data"))],
                self._path(""),
                output,
            )
        self._postmaster = postmaster

        def ready() -> bool:
            if postmaster.poll() is not None:
                self._postmaster = None
                raise RuntimeError(f"postgres exited ({postmaster.returncode})\n{_tail(log)}")
            try:
                lines = pidfile.read_text().splitlines()
            except OSError:
                return False
            return (
                len(lines) > 7 and lines[0] == str(postmaster.pid) and lines[7].strip() == "ready"
            )

        _wait_until(ready, "PostgreSQL is not ready", log)

    def stop(self, mode: StopMode = "fast") -> None:
        """Shut down: ``fast`` rolls back open transactions and disconnects clients cleanly;
        ``immediate`` quits at once, so the next start runs crash recovery."""
        signum = signal.SIGINT if mode == "fast" else signal.SIGQUIT
        _end(self._running(), signum)

    def restart(self, mode: StopMode = "fast") -> None:
        self.stop(mode)
        self.start()

    def kill(self, *, backends: bool = True) -> None:
        """Crash the server; ``start()`` then recovers from the WAL. By default the postmaster
        and every backend die at the same instant, as in a power cut: clients just see their
        connections reset. ``backends=False`` kills the postmaster alone, as the OOM killer
        might: each backend notices, tells its client ("terminating connection due to
        unexpected postmaster exit") and quits, and this returns once they all have."""
        postmaster = self._running()
        # Stopped first, so that the postmaster forks no more and no backend sees it die
        # before that backend is killed too.
        os.kill(postmaster.pid, signal.SIGSTOP)
        children = self._children(postmaster.pid)
        victims = children if backends else set()
        for pid in victims:
            os.kill(pid, signal.SIGSTOP)
        for pid in {postmaster.pid, *victims}:
            os.kill(pid, signal.SIGKILL)
        postmaster.wait()
        _wait_until(lambda: not _any_alive(children), "backends outlive their postmaster")
        # A reboot would clear the postmaster's System V segment; a server that is never
        # started again would leak it, so remove it as the shutdown would have.
        shmid = self._path("data/postmaster.pid").read_text().splitlines()[6].split()[1]
        subprocess.run(["ipcrm", "-m", shmid], check=True)

    def pause(self) -> None:
        """Make the server stop answering without closing anything, as a hung host or a
        black-holed network would: the postmaster and every process it forked are stopped
        (SIGSTOP; the postmaster first, so that it forks no more). Connections stay open and
        new ones are accepted by the kernel, but nothing is ever read or answered until
        ``resume()``."""
        postmaster = self._postmaster_pid()
        os.kill(postmaster, signal.SIGSTOP)
        for pid in self._children(postmaster):
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a ``pause()``d server run on (SIGCONT), the postmaster last."""
        postmaster = self._postmaster_pid()
        for pid in self._children(postmaster):
            os.kill(pid, signal.SIGCONT)
        os.kill(postmaster, signal.SIGCONT)

    def _postmaster_pid(self) -> int:
        if self._postmaster is None:
            raise RuntimeError("the server is not running")
        return self._postmaster.pid

    @staticmethod
    def _children(postmaster: int) -> set[int]:
        return {pid for pid, (_, ppid) in _processes().items() if ppid == postmaster}

    async def terminate_backends(self) -> int:
        """Disconnect every other client, as an operator or a failover would; returns how many
        were terminated (each has exited by the time this returns)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))"
                    " FROM pg_stat_activity"
                    " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                )
            )
        finally:
            await conn.close()

    def _running(self) -> subprocess.Popen[str]:
        postmaster, self._postmaster = self._postmaster, None
        if postmaster is None:
            raise RuntimeError("the server is not running")
        return postmaster

    def _teardown(self) -> None:
        if self._postmaster is not None:
            self.stop("immediate")


class PgBouncer(_LoopbackServer):
    """PgBouncer in transaction mode (trust auth) in front of the PostgreSQL server on
    127.0.0.1:``server_port``: every database name is passed through to the server, and
    ``max_client_conn`` clients share ``pool_size`` server connections per database and user.
    asyncpg's startup packet (user, database, client_encoding and any ``server_settings``
    PgBouncer tracks, such as application_name) needs no ``ignore_startup_parameters``."""

    _prefix = "convostore-pgbouncer-"

    def __init__(
        self,
        server_port: int,
        *,
        user: str = "postgres",
        database: str = "postgres",
        pool_size: int = 10,
        max_client_conn: int = 200,
    ) -> None:
        super().__init__(user, database)
        self.server_port = server_port
        self._pool_size = pool_size
        self._max_client_conn = max_client_conn
        self._executable = pgbouncer_path()
        self._process: subprocess.Popen[str] | None = None

    def _setup(self) -> None:
        log = self._path("pgbouncer.log")
        self._path("users.txt").write_text(f'"{self.user}" ""\n')
        self._path("pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={LOOPBACK} port={self.server_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = {LOOPBACK}\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {self._path('')}\n"
            "auth_type = trust\n"
            f"auth_file = {self._path('users.txt')}\n"
            "pool_mode = transaction\n"
            f"max_client_conn = {self._max_client_conn}\n"
            f"default_pool_size = {self._pool_size}\n"
            f"logfile = {log}\n"
            f"pidfile = {self._path('pgbouncer.pid')}\n"
        )
        process = _spawn(
            [str(self._executable), str(self._path("pgbouncer.ini"))],
            self._path(""),
            subprocess.DEVNULL,
        )
        self._process = process

        def listening() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited ({process.returncode})\n{_tail(log)}")
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=1).close()
            except OSError:
                return False
            return True

        _wait_until(listening, "pgbouncer does not accept connections", log)

    def stop(self) -> None:
        """Shut down at once (SIGTERM: open client connections are dropped)."""
        process, self._process = self._process, None
        if process is not None:
            _end(process, signal.SIGTERM)

    def _teardown(self) -> None:
        self.stop()
