"""FastAPI is an extra: ``import squidmesh`` must not import it; ``squidmesh.fastapi`` does.

Checked in a fresh interpreter, since this process may have imported FastAPI
for other tests already.
"""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import squidmesh
import squidmesh.progress, squidmesh.state_machine
web = sorted(m for m in sys.modules if m.split(".")[0] in {"fastapi", "starlette", "pydantic"})
assert not web, web
import squidmesh.fastapi
assert "fastapi" in sys.modules
from squidmesh.fastapi import get_store, lifespan, runs_router
print("ok")
"""


def test_importing_squidmesh_does_not_import_fastapi() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_fastapi_is_not_part_of_the_top_level_namespace() -> None:
    import squidmesh

    assert "fastapi" not in squidmesh.__all__
