"Atomic writes: a destination is either the complete new content or untouched, and no temporary is left."
import pickle

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from rewardsae.files import atomic_file, atomic_folder, atomic_write_bytes, atomic_write_text, save_figure


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_write_text_and_bytes(tmp_path):
    p = atomic_write_text(tmp_path / "sub" / "f.json", "{}")
    assert p.read_text() == "{}" and names(p.parent) == ["f.json"]
    atomic_write_bytes(p, pickle.dumps([1, 2]))
    assert pickle.loads(p.read_bytes()) == [1, 2] and names(p.parent) == ["f.json"]


def test_failed_file_write_keeps_old_content(tmp_path):
    p = atomic_write_text(tmp_path / "table.csv", "old")
    with pytest.raises(RuntimeError):
        with atomic_file(p) as tmp:
            assert tmp.parent == p.parent and tmp.suffix == ".csv" and tmp.name.startswith(".")
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert p.read_text() == "old" and names(tmp_path) == ["table.csv"]


def test_folder_replace_and_refuse(tmp_path):
    dest = tmp_path / "sae"
    with atomic_folder(dest) as f:
        (f / "cfg.json").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_folder(dest, replace=True) as f:
            (f / "cfg.json").write_text("2")
            raise RuntimeError("killed")
    assert (dest / "cfg.json").read_text() == "1" and names(tmp_path) == ["sae"]
    with pytest.raises(FileExistsError, match="replace=True"):
        with atomic_folder(dest) as f:
            (f / "cfg.json").write_text("3")
    assert (dest / "cfg.json").read_text() == "1" and names(tmp_path) == ["sae"]
    with atomic_folder(dest, replace=True) as f:
        (f / "cfg.json").write_text("4")
    assert (dest / "cfg.json").read_text() == "4" and (dest.stat().st_mode & 0o777) == 0o755


@pytest.mark.parametrize("given", ["fig", "fig.png", "fig.pdf"])
def test_save_figure_writes_png_and_pdf(tmp_path, given):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    paths = save_figure(fig, tmp_path / given)
    plt.close(fig)
    assert names(tmp_path) == ["fig.pdf", "fig.png"] and [p.suffix for p in paths] == [".png", ".pdf"]
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "fig.pdf").read_bytes()[:4] == b"%PDF"
