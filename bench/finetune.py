"""`splice bench finetune`: fine-tuning methods and data mixes on a team's repository, side by side.

Each variant runs `splice finetune --repo REPO --json` in its own process (so that peak memory is
its own) with the same held-out split, gate tasks, seed and training budget, and the table shows
the gate's before/after numbers (held-out files of the newest commits; next-line match, FIM loss,
and the pass rate of the repository's tests on masked lines of tested functions), with paired p-values,
plus trained parameters, step time and peak RSS. The gate's "before" scores are computed once per
repository and reused by every variant (same tasks, same served model).

    splice bench finetune --repo /path/to/checkout [--variants lora sara lora:no-edits]
        [--max-steps 120] [--time-limit-s 600] [--out DIR] [--json OUT]

Variants: `lora`, `sara` (LintSeq + git-history samples mixed in), and `METHOD:no-edits` (FIM
samples of the files only: the ablation).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run_variant(
    repo: Path, variant: str, out: Path, args: argparse.Namespace, before: Path | None
) -> dict[str, Any]:
    method, _, mix = variant.partition(":")
    cmd = [
        sys.executable, "-m", "splice.assistant.cli", "finetune", "--repo", str(repo), "--out", str(out),
        "--method", method, "--max-steps", str(args.max_steps), "--json", "--quiet",
        "--heldout-commits", str(args.heldout_commits), "--gate-tasks", str(args.gate_tasks),
        "--gate-test-tasks", str(args.gate_test_tasks),
    ]  # fmt: skip
    if args.gate_test_python:
        cmd += ["--gate-test-python", args.gate_test_python]
    if args.time_limit_s:
        cmd += ["--time-limit-s", str(args.time_limit_s)]
    if mix == "no-edits":
        cmd += ["--no-lintseq", "--no-history"]
    done = out / "adapter" / "splice-adapter.json"
    if args.reuse and done.is_file():  # this variant finished in an earlier run of the bench
        finished: dict[str, Any] = json.loads(done.read_text())
        return {**finished, "variant": variant, "bench_wall_s": finished.get("wall_seconds")}
    out.mkdir(parents=True, exist_ok=True)
    if before is not None:  # the first variant's gate tasks and "before" scores
        for name in ("gate-before.json", "gate-tested.json"):
            if (before / name).is_file():
                shutil.copy(before / name, out / name)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), check=False)
    wall = time.perf_counter() - started
    text = proc.stdout
    start = text.find("{")
    if proc.returncode not in (0, 4) or start < 0:
        raise RuntimeError(f"{variant} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report: dict[str, Any] = json.JSONDecoder().raw_decode(text[start:])[0]
    report["variant"] = variant
    report["bench_wall_s"] = round(wall, 1)
    return report


def table(reports: list[dict[str, Any]]) -> str:
    head = (
        f"{'variant':16} {'steps':>5} {'params':>9} {'s/step':>7} {'RSS MB':>7} | "
        f"{'EM b→a':>13} {'ES b→a':>13} {'p(ES)':>6} | {'loss b→a':>13} {'p(loss)':>7} | "
        f"{'tests b→a':>13} {'p':>6} {'beats':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in reports:
        g, t = r["gate"], r["training"]
        em, es, loss = g["exact_match"], g["edit_similarity"], g["middle_loss"]
        step_s = t["train_seconds"] / max(t["steps"], 1)
        cost = f"{t['steps']:5d} {t['trained_parameters']:9,d} {step_s:7.2f} {t['peak_rss_mb']:7.0f}"
        quality = f"{em['before']:.3f}→{em['after']:.3f}   {es['before']:.3f}→{es['after']:.3f}"
        quality += f"   {es['p_value']:6.3f}"
        lossed = f"{loss['before']:.3f}→{loss['after']:.3f}   {loss['p_value']:7.3f} | "
        tests = g.get("tests_pass_rate")
        if tests:
            lossed += f"{tests['before']:.3f}→{tests['after']:.3f}   {tests['p_value']:6.3f}"
        else:
            lossed += f"{'—':>13} {'':6}"
        lossed += f" {g['beats_current']!s:>5}"
        lines.append(f"{r['variant']:16} {cost} | {quality} | {lossed}")
    if reports:
        g = reports[0]["gate"]
        tested = g.get("tests_pass_rate", {}).get("tasks", 0)
        lines.append(
            f"(gate: {g['tasks']} held-out lines, {tested} of them masked lines of tested functions checked "
            "by the repository's tests; p-values: exact sign/McNemar tests, paired by line)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="splice bench finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", required=True, type=Path, help="a git checkout")
    parser.add_argument("--variants", nargs="+", default=["lora", "sara", "lora:no-edits"])
    parser.add_argument("--max-steps", type=int, default=120)
    parser.add_argument("--time-limit-s", type=float, help="training budget per variant")
    parser.add_argument("--heldout-commits", type=int, default=5)
    parser.add_argument("--gate-tasks", type=int, default=80)
    parser.add_argument(
        "--gate-test-tasks", type=int, default=12, help="masked lines of tested functions (0: off)"
    )
    parser.add_argument("--gate-test-python", help="the Python that runs the repository's tests")
    parser.add_argument("--out", type=Path, default=Path("finetune-bench"))
    parser.add_argument("--json", type=Path, help="write every report here")
    parser.add_argument(
        "--reuse", action="store_true", help="take the variants already finished in --out as they are"
    )
    args = parser.parse_args(argv)
    repo = args.repo.expanduser().resolve()
    if not (repo / ".git").exists():
        print(f"splice bench finetune: {repo} is not a git checkout", file=sys.stderr)
        return 2
    reports = []
    before: Path | None = None
    for variant in args.variants:
        out = args.out / repo.name / variant.replace(":", "-")
        print(f"[{repo.name}] {variant} ...", file=sys.stderr, flush=True)
        reports.append(run_variant(repo, variant, out, args, before))
        before = out
        print(table(reports[-1:]), file=sys.stderr, flush=True)
    data = reports[0]["data"]
    print(
        f"\n{repo.name}: {data['train_files']} training files, {data['heldout_files']} held-out files "
        f"(newest {args.heldout_commits} commits)"
    )
    print(table(reports))
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
