"""Stage timings of finished runs: reads `summary.json` (keys `timings`, wall seconds per pipeline step, and
`stage_seconds`, compute seconds per cached stage) of every run folder under `--runs`.

    python bench/stage_timings.py                 # runs/ of the repository
    rewardsae run --preset cpu                    # makes runs/smollm2-135m-utility-cpu/summary.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HERE, table, write_json  # noqa: E402

REGENERATE = "rewardsae run --preset cpu   (writes runs/smollm2-135m-utility-cpu/summary.json; then rerun this script)"


def find_summaries(root: Path) -> list[Path]:
    "Every `summary.json` directly inside a run folder under `root`, newest first."
    if not root.is_dir():
        return []
    return sorted(root.glob("*/summary.json"), key=lambda p: p.stat().st_mtime, reverse=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=str(HERE.parent / "runs"), help="folder holding run folders")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    out = {"bench": "stages", "runs": []}
    found = find_summaries(Path(a.runs))
    if not found:
        print(f"No run with a summary.json under {a.runs}. To make one: {REGENERATE}")
        # runs still in progress: the stages finished so far (each stage folder's stage.json records its seconds)
        for run in sorted(Path(a.runs).glob("*/stages")) if Path(a.runs).is_dir() else []:
            done = {d.name: json.loads((d / "stage.json").read_text()).get("seconds")
                    for d in sorted(run.iterdir()) if (d / "stage.json").is_file()}
            if done:
                print(f"\nRun in progress {run.parent}: {len(done)} stages finished so far")
                print(table([{"stage": k, "seconds": float(v)} for k, v in done.items()], ["stage", "seconds"]))
                out["runs"].append({"folder": str(run.parent), "in_progress": True, "stage_seconds": done})
    for f in found:
        s = json.loads(f.read_text())
        p = s.get("params", {})
        timings = s.get("timings") or {}
        stages = s.get("stage_seconds") or {}
        total = sum(float(v) for v in timings.values())
        print(f"\nRun {f.parent} (model {p.get('model')}, reward {p.get('reward')}, preset {p.get('preset')}): "
              f"{total:,.0f} s over the pipeline steps")
        if timings:
            print(table([{"step": k, "wall seconds": float(v), "share": f"{100 * float(v) / max(total, 1e-9):.0f}%"}
                         for k, v in timings.items()], ["step", "wall seconds", "share"]))
        if stages:
            print()
            print(table([{"stage": k, "seconds": float(v)} for k, v in stages.items()], ["stage", "seconds"]))
        out["runs"].append({"folder": str(f.parent), "params": p, "timings": timings, "stage_seconds": stages})
    if a.json:
        write_json(a.json, out)
    return out


if __name__ == "__main__":
    main()
