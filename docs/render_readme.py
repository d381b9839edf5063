"""Write README.md from docs/README.template.md: every number in the README is read from the committed reference run
(`figures/reference_summary.json`, `figures/reference_report.md`), never typed. `make readme` runs it; a test checks
that README.md is what it writes.

Placeholders: `{{verdict}}` (the reference report's opening paragraph), `{{sentiment_verdict}}` (the sentiment
reference run's, `figures/reference_sentiment_report.md`), `{{json:KEY.PATH|FORMAT}}` (a value of the
reference summary, e.g. `{{json:table4.diff.mean_utility.mean|+.3f}}`), `{{minutes:SECONDS_KEY}}`."""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def value(summary: dict, path: str):
    v = summary
    for part in path.split("."):
        v = v[int(part)] if isinstance(v, list) else v[part]
    return v


def render(root: Path = ROOT) -> str:
    summary = json.loads((root / "figures" / "reference_summary.json").read_text())
    report = (root / "figures" / "reference_report.md").read_text()
    verdict = report.split("## What this run found\n", 1)[1].split("\n## ", 1)[0].strip()
    text = (root / "docs" / "README.template.md").read_text()
    text = text.replace("{{verdict}}", verdict)
    sent = root / "figures" / "reference_sentiment_report.md"
    if "{{sentiment_verdict}}" in text:
        text = text.replace("{{sentiment_verdict}}", sent.read_text().split("## What this run found\n", 1)[1].split("\n## ", 1)[0].strip())
    text = text.replace("{{stage_minutes}}", f"{sum(summary['timings'].values()) / 60:.0f}")
    def one(m):
        path, _, fmt = m.group(1).partition("|")
        return format(value(summary, path), fmt)
    return re.sub(r"\{\{json:([^}]+)\}\}", one, text)


if __name__ == "__main__":
    out = render()
    if "--check" in sys.argv:
        sys.exit(0 if (ROOT / "README.md").read_text() == out else "README.md is stale: run `make readme`")
    (ROOT / "README.md").write_text(out)
