"The chapters are the tutorial: committed with their outputs (`make notebooks`), every figure a chapter draws is in it, and outputs stay small."
import json
import re
from pathlib import Path

import pytest

NBS = sorted((Path(__file__).resolve().parent.parent / "nbs").glob("*.ipynb"))
DRAWS = re.compile(r"^(?!\s*#).*(plt\.show|plot_\w+\(|display\(Image\()", re.M)


def code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def runs(cell):
    src = "".join(cell["source"])
    return "#| eval: false" not in src and "#|eval: false" not in src


@pytest.mark.parametrize("path", NBS, ids=[p.stem for p in NBS])
def test_chapter_carries_its_outputs_and_figures(path):
    nb = json.loads(path.read_text())
    cells = [c for c in code_cells(nb) if runs(c) and "".join(c["source"]).strip()
             and not "".join(c["source"]).lstrip().startswith(("#| export", "#| default_exp", "#|export"))]
    executed = [c for c in cells if c.get("outputs")]
    assert not cells or executed, f"{path.name}: committed without outputs (run `make notebooks`)"
    for c in cells:
        if DRAWS.search("".join(c["source"])):
            kinds = {k for o in c.get("outputs", []) for k in o.get("data", {})}
            assert "image/png" in kinds, f"{path.name}: a cell that draws a figure has no image output: {''.join(c['source'])[:80]!r}"
    assert path.stat().st_size < 2_500_000, f"{path.name}: {path.stat().st_size} bytes; keep outputs small"
    for c in cells:
        for o in c.get("outputs", []):
            text = "".join(o.get("text", "")) if isinstance(o.get("text", ""), list) else o.get("text", "")
            assert len(text) < 40_000, f"{path.name}: an output of {len(text)} characters (a log?)"
