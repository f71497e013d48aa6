"""The GPU check: does the course run on a CUDA machine, and how fast?

    python scripts/gpu_check.py [--quick NOTEBOOK|none] [--report PATH]
    (or scripts/gpu_check.sh, or make gpu-check)

On a machine with a CUDA GPU it runs, each step timed and marked pass or fail:

1. the tests that exercise the GPU (`pytest -m "numerical or cuda"`: the CUDA tests,
   and the numerical tests, which run on the CPU beside them);
2. every notebook at the `smoke` budget, on the GPU (the notebooks pick CUDA by
   themselves), from a copy so that the committed notebooks stay as they are;
3. a timed `quick` run of the heaviest notebook (02 by default), whose checks and
   "This run, in numbers" are copied into the report.

and writes a short Markdown report: the device, the versions, the times, pass or
fail. Without a GPU it says so at the top, skips the timed `quick` run unless asked
for one (`--quick 02`), and runs steps 1 and 2 on the CPU, so that every path it
can take here is exercised.

It needs the project's test and notebook packages (pytest, nbclient, ipykernel, ...).
A machine that has PyTorch but no Jupyter packages can be given them as wheels in
`.whl/`: the check installs those into a temporary folder first (no network used).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], env: dict, timeout: float, cwd: Path = ROOT) -> tuple[bool, float, str]:
    """(passed, seconds, the output's last lines) of a command."""
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                             timeout=timeout)
        ok, text = out.returncode == 0, out.stdout + out.stderr
    except subprocess.TimeoutExpired as err:
        ok, text = False, f"timed out after {timeout:.0f} s\n{err.stdout or ''}"
    return ok, time.perf_counter() - start, "\n".join(text.strip().splitlines()[-15:])


def wheels_on_path(env: dict) -> str:
    """Where the notebook packages are missing, install the wheels of `.whl/` into a
    temporary folder on PYTHONPATH."""
    try:
        import ipykernel  # noqa: F401
        import nbclient  # noqa: F401
        return "the notebook packages are installed"
    except ImportError:
        pass
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if not wheels:
        return "the notebook packages are missing and .whl/ holds no wheels: steps 2-3 will fail"
    target = Path(tempfile.mkdtemp(prefix="gpu-check-site-"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-compile", "--target", str(target), *map(str, wheels)], check=True)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH")]))
    return f"{len(wheels)} wheels from .whl/ installed into {target}"


def device_lines() -> tuple[bool, list[str]]:
    import torch

    lines = [f"date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
             f"host {platform.node()}, {platform.system()} {platform.machine()}",
             f"python {platform.python_version()}, torch {torch.__version__}, "
             f"CUDA build {torch.version.cuda}"]
    cuda = torch.cuda.is_available()
    if cuda:
        p = torch.cuda.get_device_properties(0)
        lines.append(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability "
                     f"{p.major}.{p.minor}, {torch.cuda.device_count()} device(s)")
        if shutil.which("nvidia-smi"):
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True)
            lines.append(f"driver {smi.stdout.strip()}")
    else:
        lines.append("**No CUDA GPU found**: torch.cuda.is_available() is False. The CUDA tests "
                     "are skipped and the notebooks run on the CPU; this exercises the check, "
                     "not the GPU.")
    return cuda, lines


def run_notebook(path: Path, budget: str, env: dict, timeout: float) -> tuple[bool, float, str]:
    """Run a copy of a notebook as `make run` would; the copy's checks and summaries."""
    work = Path(tempfile.mkdtemp(prefix="gpu-check-nb-"))
    (work / "notebooks").mkdir()
    copy = work / "notebooks" / path.name
    shutil.copy(path, copy)
    env = dict(env, NODE_BUDGET=budget, NODE_PROGRESS="text",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    ok, seconds, tail = run([sys.executable, str(ROOT / "scripts" / "run_notebooks.py"),
                             str(copy)], env, timeout)
    summary = []
    try:
        nb = json.loads(copy.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            for out in cell.get("outputs", []):
                md = out.get("data", {}).get("text/markdown")
                if md and "This run, in numbers" in "".join(md):
                    summary.append("".join(md).strip())
                if out.get("output_type") == "error":
                    summary.append(f"error: {out.get('ename')}: {out.get('evalue')}"[:2000])
        if nb["cells"] and nb["cells"][-1].get("outputs"):
            last = nb["cells"][-1]["outputs"][-1]
            summary.append("last cell: " + "".join(last.get("text", ""))[-1500:].strip())
    except (OSError, ValueError, KeyError) as err:
        summary.append(f"could not read the executed notebook: {err}")
    return ok, seconds, "\n\n".join(summary) if ok else tail + "\n\n" + "\n\n".join(summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", default=None,
                        help="notebook number for the timed quick run (default: 02 on a GPU, "
                             "none on the CPU); 'none' skips it")
    parser.add_argument("--report", default=None, help="where to write the report "
                        "(default: $OUT/gpu-check.md if OUT is set, else data/gpu-check.md)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per step")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    env.setdefault("NODE_DATA_ROOT", str(ROOT / "data"))
    shared = ROOT.parent / "shared" / "data"
    if (shared / "MNIST" / "raw").is_dir() and "NODE_DATA_ROOT" not in os.environ:
        env["NODE_DATA_ROOT"] = str(shared)
    cuda, lines = device_lines()
    lines.append(wheels_on_path(env))
    quick = args.quick or ("02" if cuda else "none")
    path = Path(args.report or (Path(os.environ["OUT"]) / "gpu-check.md" if os.environ.get("OUT")
                                else ROOT / "data" / "gpu-check.md"))
    path.parent.mkdir(parents=True, exist_ok=True)
    steps: list[tuple[str, bool, float, str]] = []

    def write(done: bool) -> str:
        """The report so far: written after every step, so a run cut short still has one."""
        report = ["# GPU check", "", *[f"- {line}" for line in lines], "",
                  "| step | result | seconds |", "|---|---|---|"]
        report += [f"| {name} | {'pass' if ok else '**FAIL**'} | {sec:.0f} |"
                   for name, ok, sec, _ in steps]
        for name, _, _, text in steps:
            if text:
                report += ["", f"## {name}", "", "```", text, "```"]
        passed = all(ok for _, ok, _, _ in steps)
        verdict = ("all steps passed" if passed else "some steps failed") if done else "running"
        report += ["", f"**{verdict}**" + ("" if cuda else " (on the CPU: no GPU found)"), ""]
        text = "\n".join(report)
        path.write_text(text, encoding="utf-8")
        return text

    def step(name: str, result: tuple[bool, float, str], show: bool) -> None:
        ok, sec, text = result
        steps.append((name, ok, sec, text if (show or not ok) else ""))
        print(f"{name}: {'pass' if ok else 'FAIL'} in {sec:.0f} s", flush=True)
        write(done=False)

    write(done=False)
    step("tests: -m 'numerical or cuda'",
         run([sys.executable, "-m", "pytest", "tests", "-m", "numerical or cuda", "-q",
              "-p", "no:cacheprovider"], dict(env, NODE_BUDGET="smoke"), args.timeout), True)
    for nb in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        step(f"{nb.stem}, smoke", run_notebook(nb, "smoke", env, args.timeout), False)
    if quick != "none":
        nb = next((ROOT / "notebooks").glob(f"{quick}*.ipynb"))
        step(f"{nb.stem}, quick (timed)", run_notebook(nb, "quick", env, args.timeout), True)
    text = write(done=True)
    print(text)
    print(f"report written to {path}")
    return 0 if all(ok for _, ok, _, _ in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
