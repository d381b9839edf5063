"The README a newcomer reads: short, its verdict and figures from the committed reference run, never retyped numbers."
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _render():
    spec = importlib.util.spec_from_file_location("render_readme", ROOT / "docs" / "render_readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.render(ROOT)


def test_readme_is_written_from_the_reference_run_and_is_short():
    readme = (ROOT / "README.md").read_text()
    assert readme == _render(), "README.md is stale: run `make readme`"
    assert len(readme.splitlines()) <= 150
    first_screen = "\n".join(readme.splitlines()[:40])
    assert "## What the reference run found" in first_screen and "![" in first_screen
    for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme):
        assert (ROOT / img).exists(), img
    for link in re.findall(r"\]\((nbs/[^)]+)\)", readme):
        assert (ROOT / link).exists(), link
