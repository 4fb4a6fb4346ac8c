"""What keeps a build near the speed of ``tar cf``: start-up, and work that overlaps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import Keys

# Runs the real CLI in a fresh interpreter, then says which heavy modules it loaded.
_BUILD_AND_LIST_MODULES = """
import json, sys
from bundler.cli.main import cli
try:
    cli.main(sys.argv[1:], standalone_mode=False)
finally:
    loaded = sorted({m.split(".")[0] for m in sys.modules})
    print(json.dumps(loaded), file=sys.stderr)
"""


def test_a_local_build_does_not_import_the_fetch_clients(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    """Local sources need no HTTP or hub client: importing them was a third of start-up."""
    out = tmp_path / "demo.tar"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _BUILD_AND_LIST_MODULES,
            "-q",
            "build",
            str(demo_manifest),
            "-o",
            str(out),
            "--key",
            str(key.private),
        ],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert out.stat().st_size > 0
    loaded = set(json.loads(proc.stderr.decode().strip().splitlines()[-1]))
    assert "bundler" in loaded  # the listing is real
    assert not loaded & {"requests", "huggingface_hub", "urllib3"}, loaded & {
        "requests",
        "huggingface_hub",
        "urllib3",
    }
