"""Seconds until the `ple-trl` commands that need no model answer, against `trl --help`.

`ple-trl --help`, `ple-trl plot --help` and a mistyped command must stay under 2 s: `ple_trl.cli` and
`ple_trl.plotting` import no torch, transformers or TRL at module level, and `import ple_trl` loads `PLEConfig`,
`PLETrainer`, ... on first use. `ple-trl train --help` has to build the parser over `PLEConfig`, so it pays for
TRL's import, as `trl grpo --help` does. Each command runs `--repeat` times in a fresh process; the table shows the
median wall time (the first run also warms the file cache and is not counted).

```bash
python benchmarks/cli_startup.py              # about a minute
python benchmarks/cli_startup.py --write      # also writes benchmarks/results/cli_startup.md
```
"""

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 2.0


def _console_script(name: str) -> list[str] | None:
    script = Path(sys.executable).with_name(name)
    if script.exists():
        return [str(script)]
    found = shutil.which(name)
    return [found] if found else None


def commands() -> list[tuple[str, list[str], bool]]:
    """(label, command, must stay under the budget) for each timed command."""
    ple_trl = _console_script("ple-trl") or [sys.executable, "-m", "ple_trl.cli"]
    rows = [
        ("ple-trl --help", [*ple_trl, "--help"], True),
        ("ple-trl plot --help", [*ple_trl, "plot", "--help"], True),
        ("ple-trl trian (argument error)", [*ple_trl, "trian"], True),
        ('python -c "import ple_trl"', [sys.executable, "-c", "import ple_trl"], True),
        ("ple-trl train --help", [*ple_trl, "train", "--help"], False),
    ]
    trl = _console_script("trl")
    if trl is not None:
        rows += [("trl --help", [*trl, "--help"], False), ("trl grpo --help", [*trl, "grpo", "--help"], False)]
    return rows


def time_command(command: list[str], repeat: int) -> list[float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    seconds = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
        seconds.append(time.perf_counter() - start)
    return seconds[1:]


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="Timed runs per command (after one warm-up run).")
    parser.add_argument("--write", action="store_true", help="Write the table to benchmarks/results/cli_startup.md.")
    args = parser.parse_args(argv)

    lines = [
        "# CLI start-up",
        "",
        f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, median of {args.repeat} "
        "runs after one warm-up",
        "",
        f"| command | s (median) | min | max | under {BUDGET_S:.0f} s |",
        "|---|---:|---:|---:|---|",
    ]
    for label, command, budgeted in commands():
        seconds = time_command(command, args.repeat)
        median = statistics.median(seconds)
        verdict = ("yes" if median < BUDGET_S else "**NO**") if budgeted else "(not required)"
        lines.append(f"| `{label}` | {median:.2f} | {min(seconds):.2f} | {max(seconds):.2f} | {verdict} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    if args.write:
        out = ROOT / "benchmarks" / "results" / "cli_startup.md"
        out.write_text(table)
        print(f"Written to {out}")
    return table


if __name__ == "__main__":
    main()
