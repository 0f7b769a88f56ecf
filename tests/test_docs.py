"""The architecture picture is rendered from its text source: a stale docs/architecture.svg fails here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.services import ROOT, require

SOURCE = ROOT / "docs" / "architecture.dot"
PICTURE = ROOT / "docs" / "architecture.svg"
RENDER = ROOT / "scripts" / "render-docs"


def render(source: Path, output: Path) -> bytes:
    """Render ``source`` with scripts/render-docs (as a developer would) and return the SVG's bytes."""
    if shutil.which("dot") is None:
        require("graphviz", "the 'dot' command is not on PATH")
    subprocess.run([str(RENDER), str(source), str(output)], check=True, capture_output=True, timeout=60)
    return output.read_bytes()


def test_rendering_is_deterministic(tmp_path: Path) -> None:
    first = render(SOURCE, tmp_path / "first.svg")
    assert render(SOURCE, tmp_path / "second.svg") == first
    assert b"graphviz version" not in first


def test_committed_picture_matches_its_source(tmp_path: Path) -> None:
    fresh = render(SOURCE, tmp_path / "architecture.svg")
    assert fresh == PICTURE.read_bytes(), (
        "docs/architecture.svg is stale: it is not what docs/architecture.dot renders to; run scripts/render-docs"
    )
