"""The committed browser bundle is exactly what scripts/build_client produces."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_bundle_is_what_the_build_script_produces(tmp_path: Path) -> None:
    rebuilt = tmp_path / "ghostless.js"
    subprocess.run([str(ROOT / "scripts" / "build_client"), str(rebuilt)], check=True, timeout=600)
    committed = (ROOT / "signalling" / "static" / "ghostless.js").read_bytes()
    assert rebuilt.read_bytes() == committed, "run scripts/build_client and commit the bundle"


def test_the_bundle_is_served_with_the_demo_page() -> None:
    static = ROOT / "signalling" / "static"
    assert (static / "index.html").read_text().count('src="/demo.js"') == 1
    assert "from '/ghostless.js'" in (static / "demo.js").read_text()
    assert b"GhostlessClient" in (static / "ghostless.js").read_bytes()
