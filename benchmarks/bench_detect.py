"""Detection of REAL lesions: render, train and evaluate on the photographs in ../shared/data.

    python benchmarks/bench_detect.py                        # the main rows (about 1.3 h)
    python benchmarks/bench_detect.py --rows ours-idrid      # one row
    python benchmarks/bench_detect.py --rows ablations       # the ablation rows (several hours)
    python benchmarks/bench_detect.py --run RUN              # evaluate an existing run folder
    python benchmarks/bench_detect.py --list                 # what each row is
    python benchmarks/bench_detect.py --try NAME --generator G.json [--normals idrid-normal-512]
                                      [--train-args "--steps 500"]   # a row of your own

A row is one full user pipeline with the CPU preset at 256 px, run through the command-line tools
exactly as a user runs them: ``anomalygen render --src NORMALS --n 2560 --size 256``,
``resynth train --preset small --device cpu``, then ``resynth evaluate`` on

- ``idrid-512``: 30 IDRiD segmentation photographs with all four lesion types (MA, HE, EX, SE),
  the development set for detection quality (../shared/data/README.md);
- ``idrid-mini``: two full-resolution IDRiD photographs, hard exudates only (a sanity check;
  two images are no benchmark).

Rows train on ``idrid-normal-512`` (89 healthy eyes from the same clinic and cameras as the test
photographs: the paper's setting) or on ``fundus-normal`` (11 photographs of other cameras:
HRF, CHASE_DB1, Wikimedia). For each row and test set it prints pixel AUROC, AUPR and balanced
accuracy at the detector's own threshold (and at the best threshold), overall and per lesion
type, inside the field of view at 256 px; the training-free baseline (``resynth evaluate
--baseline median``: abs(green - median filter of green), window 1/8 of the side) on the same
pixels; the final validation on held-out synthetic shards; and the wall time of each phase.

Ablation rows change one thing against ``ours-idrid`` (see ``--list``). They reuse the stage-1
autoencoder of ``ours-idrid`` where stage 1 is the same (same photographs, size and stage-1
options; stage 1 never sees the generator): training is deterministic on the CPU, so this is the
same E_r a fresh stage 1 would give, and the row's wall time counts that stage 1's time.

Every row is resumable: results go to ``--out`` (default runs/bench-detect), one folder per row;
a finished row is reused unless ``--force``. Time benchmarks only on an idle machine.

Targets (issue 9), ``ours-idrid`` on idrid-512: pixel AUROC >= 0.85, AUPR >= 0.27 and at least
2x the baseline's AUPR, balanced accuracy at the detector's own threshold within 0.02 of its
best; ``ours-fundus`` clearly above the baseline; within 40 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SIZE = 256
N = 2560


@dataclass(frozen=True)
class Row:
    """One pipeline: which normals train it, generator overrides, extra `resynth train` flags."""

    name: str
    normals: str  # folder under ../shared/data
    what: str
    generator: dict = field(default_factory=dict)  # GeneratorConfig fields (JSON) over defaults
    train_args: tuple[str, ...] = ()  # to both stages (part of the stage-1 key)
    render_args: tuple[str, ...] = ()
    stage2_args: tuple[str, ...] = ()  # to stage 2 only (stage 1 stays shared)
    eval_args: tuple[str, ...] = ()  # to `resynth evaluate`
    reuse: str | None = None  # evaluate this row's run instead of training one


IDRID, FUNDUS = "idrid-normal-512", "fundus-normal"
SEVEN_OPS = ["sharpen", "solarize", "gamma", "hue", "temperature", "autocontrast", "color_shift"]
MAIN_ROWS = (
    Row("ours-idrid", IDRID, "our defaults, IDRiD normals (the paper's setting)"),
    Row("ours-fundus", FUNDUS, "our defaults, normals of other cameras"),
    Row("paper-idrid", IDRID, "the paper's generator and network, same CPU schedule",
        render_args=("--preset", "paper"),
        stage2_args=("--local-contrast", "none", "--no-photometric", "--no-test-flip")),
    Row("ours-idrid-noflip", IDRID, "ours-idrid evaluated without test-time flips",
        eval_args=("--no-flip",), reuse="ours-idrid"),
)  # fmt: skip
ABLATION_ROWS = (
    Row("stage2-500", IDRID, "stage 2 500 steps (the preset: 1,000)",
        stage2_args=("--steps", "500")),
    Row("stage2-2500", IDRID, "stage 2 2,500 steps", stage2_args=("--steps", "2500")),
    Row("soft-edges", IDRID, "opacity fades in over 0.5-3 px at the lesion edge",
        {"edge": [0.5, 3.0]}),
    Row("no-local-contrast", IDRID, "E_l without the local contrast",
        stage2_args=("--local-contrast", "none")),
    Row("one-scale", IDRID, "local contrast at 1/32 only",
        stage2_args=("--local-contrast", "0.03125")),
    Row("paper-tone", IDRID, "lesions keep C_s's colours (no tone step)",
        {"tone": {"mode": "source"}}),
    Row("seven-ops", IDRID, "all seven operations (solarize and hue too)",
        {"augment": {"ops": SEVEN_OPS}}),
    Row("no-taper", IDRID, "Perlin mask cut by the crop border", {"perlin": {"taper": 0.0}}),
    Row("paper-alpha", IDRID, "alpha 0.7 for every lesion", {"alpha_range": None}),
    Row("paper-count", IDRID, "1-4 lesions, crops up to 0.25",
        {"lesions": [1, 4], "crop_size": [0.015, 0.25]}),
    Row("paper-p-normal", IDRID, "half the samples normal", {"p_normal": 0.5}),
    Row("full-texture", IDRID, "lesions keep up to all of C_s's texture",
        {"tone": {"texture": [0.0, 1.0]}}),
    Row("old-schedule", IDRID, "the previous CPU schedule: 350 steps of 8 per stage",
        train_args=("--batch-size", "8", "--stage1-steps", "350", "--steps", "350")),
)  # fmt: skip
ROWS = {row.name: row for row in MAIN_ROWS + ABLATION_ROWS}
GROUPS = {"main": [r.name for r in MAIN_ROWS], "ablations": [r.name for r in ABLATION_ROWS]}
TEST_SETS = {"idrid-512": "idrid-512", "idrid-mini": "idrid-mini"}


def tool(name: str) -> list[str]:
    """The console script ``name`` of this environment (next to the Python running us)."""
    script = Path(sys.executable).parent / name
    found = str(script) if script.exists() else shutil.which(name)
    if found is None:
        sys.exit(f"error: {name} not found: pip install -e '.[train]' first")
    return [found]


def run(cmd: list[str], log: Path) -> float:
    """Run a command, its output appended to ``log``; seconds taken. Exits on failure."""
    t0 = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        sys.exit(f"error: `{' '.join(cmd[:2])} ...` failed (exit {code}); see {log}")
    return time.perf_counter() - t0


def evaluate(checkpoint: list[str], test: str, out: Path, log: Path) -> tuple[dict, float]:
    """``resynth evaluate`` on a test set; (metrics.json, seconds)."""
    cmd = [*tool("resynth"), "evaluate", *checkpoint, "--dataset", "idrid", "--root",
           str(DATA / TEST_SETS[test]), "--out", str(out), "--device", "cpu", "-q"]  # fmt: skip
    seconds = run(cmd, log)
    return json.loads((out / "metrics.json").read_text()), seconds


def baselines(out: Path) -> dict[str, dict]:
    """The training-free baseline on each test set at SIZE (computed once, cached)."""
    results = {}
    for test in TEST_SETS:
        folder = out / "baseline" / test
        if not (folder / "metrics.json").exists():
            folder.mkdir(parents=True, exist_ok=True)
            evaluate(
                ["--baseline", "median", "--size", str(SIZE)], test, folder, folder / "log.txt"
            )
        results[test] = json.loads((folder / "metrics.json").read_text())
    return results


def stage1_key(row: Row) -> str:
    """Rows with the same key train the same stage 1 (it never sees the generator): the same
    photographs, size, flags and preset values."""
    from resynth_models.networks import PRESETS
    from resynth_models.train import TRAIN_PRESETS

    net = PRESETS["small"]
    stage2_only = (
        "steps",
        "photometric",
        "test_flip",
        "val_samples",
        "val_interval",
        "log_interval",
        "ckpt_interval",
    )
    train = {k: v for k, v in TRAIN_PRESETS["small"].items() if k not in stage2_only}
    preset = [train, net.rec_width, net.rec_depth, net.norm]
    spec = json.dumps([row.normals, SIZE, list(row.train_args), preset], sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def last_validation(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if r.get("stage") == 2 and "val_auroc" in r]
    return vals[-1] if vals else {}


def train_row(row: Row, folder: Path, out: Path, log: Path, times: dict) -> Path:
    """Render and train one row; the run folder. Shares stage 1 between rows with one key."""
    store = folder / "synth.zarr"
    config = folder / "generator.json"
    config.write_text(json.dumps(row.generator, indent=1))
    times["render"] = run([*tool("anomalygen"), "render", "--src", str(DATA / row.normals), "--n",
                           str(N), "--size", str(SIZE), "--out", str(store), "--seed", "0",
                           "--config", str(config), "-q", *row.render_args], log)  # fmt: skip
    train = [*tool("resynth"), "train", "--data", str(store), "--preset", "small", "--device",
             "cpu", "-q", "--resume", *row.train_args]  # fmt: skip
    shared = out / "_stage1" / stage1_key(row)
    if not (shared / "stage1.safetensors").exists():
        shared.mkdir(parents=True, exist_ok=True)
        seconds = run([*train, "--out", str(shared), "--stage", "1"], log)
        (shared / "seconds.txt").write_text(f"{seconds:.1f}\n")
    times["stage1"] = float((shared / "seconds.txt").read_text())
    run_dir = folder / "run"
    times["stage2"] = run([*_without(train, row.stage2_args), "--out", str(run_dir), "--stage",
                           "2", "--stage1-from", str(shared), *row.stage2_args], log)  # fmt: skip
    return run_dir


def _without(args: list[str], overrides: tuple[str, ...]) -> list[str]:
    """``args`` without the options (and their values) that ``overrides`` gives again."""
    names = {a for a in overrides if a.startswith("--")}
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in names:
            skip = not a.startswith("--no-")  # a flag with a value
        else:
            out.append(a)
    return out


def bench_row(row: Row, out: Path, force: bool) -> dict:
    folder = out / row.name
    done = folder / "row.json"
    if done.exists() and not force:
        result = json.loads(done.read_text())
        if result.get("row") == json.loads(json.dumps(asdict(row))):  # tuples read as lists
            return result
    if force and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "log.txt"
    times: dict[str, float] = {}
    if row.reuse is not None:
        source = bench_row(ROWS[row.reuse], out, force=False)
        run_dir, times = Path(source["run"]), dict(source["times"])
    else:
        run_dir = train_row(row, folder, out, log, times)
    result = {"row": asdict(row), "run": str(run_dir), "times": times, "tests": {}}
    for test in TEST_SETS:
        metrics, seconds = evaluate(["--checkpoint", str(run_dir), *row.eval_args], test,
                                    folder / f"eval-{test}", log)  # fmt: skip
        times[f"eval-{test}"] = seconds
        result["tests"][test] = metrics
    result["validation"] = last_validation(run_dir)
    done.write_text(json.dumps(result, indent=1))
    return result


def bench_run(run_dir: Path, out: Path) -> dict:
    """Evaluate an existing run folder (no render, no training)."""
    folder = out / f"run-{run_dir.name}"
    folder.mkdir(parents=True, exist_ok=True)
    result = {"row": {"name": run_dir.name, "normals": "?", "what": str(run_dir)}, "times": {},
              "tests": {}}  # fmt: skip
    for test in TEST_SETS:
        metrics, seconds = evaluate(["--checkpoint", str(run_dir)], test, folder / f"eval-{test}",
                                    folder / "log.txt")  # fmt: skip
        result["times"][f"eval-{test}"] = seconds
        result["tests"][test] = metrics
    result["validation"] = last_validation(run_dir)
    return result


# ---------------------------------------------------------------------------------------------
# Report


def _pixel(metrics: dict) -> dict:
    return metrics.get("pixel_level") or {}


def report(results: list[dict], base: dict[str, dict]) -> str:
    lines = []
    for test in TEST_SETS:
        b = _pixel(base[test])
        lines += [
            f"## {test} (256 px, pixels inside the field of view)",
            "",
            "| row | normals | AUROC | AUPR | AUPR / baseline | ACC at own threshold | best ACC "
            "(threshold) | AUPR MA / HE / EX / SE | synthetic val AUROC / AUPR | minutes |",
            "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
            f"| baseline (median residual) | none | {b['auroc']:.3f} | {b['aupr']:.3f} | 1.00 | "
            f"| {b['best_balanced_accuracy']:.3f} ({b['best_threshold']:.3g}) | "
            f"{_types(base[test])} | | |",
        ]
        for r in results:
            m = r["tests"][test]
            p = _pixel(m)
            v = r.get("validation", {})
            val = f"{v['val_auroc']:.3f} / {v['val_aupr']:.3f}" if "val_auroc" in v else ""
            minutes = sum(t for k, t in r["times"].items() if not k.startswith("eval")) / 60
            lines.append(
                f"| {r['row']['name']} | {r['row']['normals']} | {p['auroc']:.3f} | "
                f"{p['aupr']:.3f} | {p['aupr'] / b['aupr']:.2f} | {p['balanced_accuracy']:.3f} "
                f"({p['threshold']:.3g}) | {p['best_balanced_accuracy']:.3f} "
                f"({p['best_threshold']:.3g}) | {_types(m)} | {val} | {minutes:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def _types(metrics: dict) -> str:
    types = metrics.get("pixel_by_type") or {}
    return " / ".join(f"{types[t]['aupr']:.3f}" if t in types else "-" for t in ("MA", "HE", "EX",
                                                                                 "SE"))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="main", help="comma-separated rows or groups "
                        f"({', '.join(GROUPS)}; see --list)")  # fmt: skip
    parser.add_argument("--run", type=Path, help="evaluate this run folder only")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-detect")
    parser.add_argument("--force", action="store_true", help="redo finished rows")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--try", dest="try_name", help="a row of your own, named NAME")
    parser.add_argument("--normals", default="idrid-normal-512", help="with --try")
    parser.add_argument("--generator", type=Path, help="with --try: generator JSON overrides")
    parser.add_argument("--train-args", default="", help="with --try: more `resynth train` flags")
    parser.add_argument("--render-args", default="", help="with --try: more render flags")
    parser.add_argument("--stage2-args", default="", help="with --try: flags for stage 2 only")
    args = parser.parse_args()
    if args.try_name:
        generator = json.loads(args.generator.read_text()) if args.generator else {}
        ROWS[args.try_name] = Row(
            args.try_name,
            args.normals,
            "--try",
            generator,
            tuple(args.train_args.split()),
            tuple(args.render_args.split()),
            tuple(args.stage2_args.split()),
        )
        args.rows = args.try_name
    if args.list:
        for row in ROWS.values():
            print(f"{row.name:18} {row.normals:18} {row.what}")
        return
    for needed in ("idrid-512", "idrid-mini", "idrid-normal-512", "fundus-normal"):
        if not (DATA / needed).is_dir():
            sys.exit(f"error: {DATA / needed} not found (bench_detect needs ../shared/data)")
    args.out.mkdir(parents=True, exist_ok=True)
    base = baselines(args.out)
    if args.run is not None:
        results = [bench_run(args.run, args.out)]
    else:
        names = [n for part in args.rows.split(",") for n in GROUPS.get(part, [part])]
        unknown = [n for n in names if n not in ROWS]
        if unknown:
            sys.exit(f"error: unknown row(s) {', '.join(unknown)}; see --list")
        results = []
        for name in names:
            t0 = time.perf_counter()
            results.append(bench_row(ROWS[name], args.out, args.force))
            print(f"{name}: done in {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
    text = report(results, base)
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    main()
