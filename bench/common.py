"""Shared helpers for the benchmark scripts: thread setup, machine facts, timing and table printing."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def set_threads(n: int | None) -> int:
    "Use `n` intra-op threads (default: the number of cores) for every side of a comparison."
    n = int(n or os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return torch.get_num_threads()


def machine() -> dict:
    "The facts a reader needs to compare numbers between machines, plus the load at the time of measuring."
    return {"nproc": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "cpu": _cpu_name(), "loadavg_1m_5m_15m": list(os.getloadavg()),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    "`(seconds, result)` of one call, wall clock."
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def table(rows: list[dict], cols: list[str]) -> str:
    "A Markdown table of `rows` (dicts) restricted to `cols`; floats get 3 significant digits or more."
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
        return str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: str | os.PathLike, obj: dict) -> Path:
    "Write `obj` as JSON through a temp file and a rename (never a half-written result)."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.rename(path)
    return path
