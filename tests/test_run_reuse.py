"""A run folder written by an earlier version of the code (commit 5fad203, a smoke run of tiny-neox with RL) is reused
by today's code: every stage whose computation did not change is taken from the folder, and the summary's numbers
are the same."""
import json
import shutil
from pathlib import Path

from rewardsae.pipeline import make_params, run_all

FIXTURE = Path(__file__).parent / "fixtures" / "run_5fad203"
# Stages whose computation changed on purpose since 5fad203 (each with its reason); every other stage must be reused.
CHANGED = {"sae_checks": "issue 29: CE loss on 96 reviews with an interval, untrained-dictionary and token-identity R²"}
NEW = {"output_floor": "issue 29: the output measure's random-walk floor", "dashboard": "issue 28: the feature dashboard"}


# summary keys of stages the fixture's code did not have (present even when a stage is off, as None)
NEW_KEYS = ("token_r2", "dashboard", "what_changed", "causal")


def _numbers(summary: dict) -> dict:
    "The summary without what differs between two executions of the same stages (where and when they ran)."
    return {k: v for k, v in summary.items() if k not in ("params", "timings", "versions") and k not in CHANGED and k not in NEW and k not in NEW_KEYS}


def test_a_run_folder_of_an_earlier_version_is_reused_stage_by_stage(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    rec = run / "stages" / "policy" / "stage.json"      # the policy's absolute path, as the fixture's machine wrote it
    pol = json.loads(rec.read_text())
    pol["result"]["path"] = str(run / "work" / Path(pol["result"]["path"]).parent.name / "policy")
    rec.write_text(json.dumps(pol))
    old = json.loads((run / "summary.json").read_text())
    params = json.loads((run / "params.json").read_text())
    st = run_all(make_params(**{**params, "out": str(run)}))
    stages = [x for k, v in st.items() if k not in ("summary", "run")
              for x in (v.values() if isinstance(v, dict) else [v])]
    assert len(stages) == 19 + len(NEW)
    assert sorted(s.folder.name for s in stages if not s.reused) == sorted({**CHANGED, **NEW})
    new = st["summary"]
    old["policy"]["path"] = pol["result"]["path"]
    old["stage_seconds"] = {k: v for k, v in old["stage_seconds"].items() if k not in CHANGED}
    new["stage_seconds"] = {k: v for k, v in new["stage_seconds"].items() if k not in CHANGED and k not in NEW}
    assert _numbers(new) == _numbers(old)
