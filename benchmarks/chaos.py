"""A reliability battery: crashes, damaged stores and hostile inputs, with one line per family.

    python benchmarks/chaos.py                                   # every family, the defaults
    python benchmarks/chaos.py --render-trials 3 --train-trials 1 --seed 1   # a quick run
    python benchmarks/chaos.py --families damage,inputs          # some families

Families (each prints ``<family>: <passed>/<trials> <what passing means>``):

- ``render kill -9``: ``anomalygen render`` (2 worker processes) killed with SIGKILL at a random
  time between the store's creation and the end of an uninterrupted render (the start-up before
  it, Python's imports, writes nothing), then the same command run again; the resumed store
  must equal an uninterrupted render byte for byte (every object; the group attributes but the
  timestamps and store id).
- ``training kill -9``: ``resynth train`` (tiny networks, checkpoints every 5 steps) killed at a
  random time after its run folder is created, then resumed with ``--resume`` until it
  completes; both stages' final weights must equal an uninterrupted run's: the tensor data byte
  for byte and the header's content (safetensors writes its metadata mapping in a different key
  order in every process, so two uninterrupted runs' files already differ in those bytes).
- ``damaged store``: a copy of a rendered store loses an object, gets a flipped byte, a truncated
  or a swapped object, in each array and in the pools; every read must either raise a
  ``StoreError`` or return the undamaged store's data, ``anomalygen verify`` must report it, and
  ``anomalygen verify --repair`` must give back the undamaged store byte for byte.
- ``bad input``: FIFOs among the sources or as a list file, a decompression bomb, hostile store
  attributes, absurd sizes, a link planted in a store, damaged checkpoints, a damaged store given
  to training; each command must end within its time limit with the expected exit code and
  one-line messages (no traceback, no "internal error").
- ``concurrent render``: a second render started into a store that a render is writing must be
  refused in one line, and the first render's store must equal the uninterrupted one.

The kill times and the damaged shards are drawn from ``--seed``, so a run is reproducible (the
machine's speed moves what a kill at a given time interrupts). Every command runs as a user runs
it: a fresh ``python -m cli...`` process. Work happens under ``--tmp`` and is deleted after.
Exits 1 if a family is not at 100%, listing each failure on stderr.

Not here: disk-full points (a size-limited filesystem needs root to mount; see
``tests/test_render.py::test_write_error_keeps_completed_shards``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The render every family starts from: 192 samples of 64 px in 24 shards of 8 (a few seconds).
#: The full layout: the damage families below break the ``image`` and ``mask`` arrays.
RENDER = ["--n", "192", "--size", "64", "--shard-size", "8", "--layout", "full", "--quiet"]
#: Tiny training: networks of width 4 and depth 3 at 32 px, 40 steps a stage, checkpoints every
#: 5, the DataLoader in the training process, validation at the end of stage 2.
TRAIN = {"--preset": "small", "--size": "32", "--batch-size": "2", "--steps": "40",
         "--rec-width": "4", "--rec-depth": "3", "--loc-width": "4", "--loc-depth": "3",
         "--workers": "0", "--ckpt-interval": "5", "--log-interval": "5", "--val-interval": "0",
         "--val-samples": "16", "--val-fraction": "0.2", "--device": "cpu"}  # fmt: skip
#: Seconds any command may take before it counts as hung.
LIMIT_S = 120.0
#: Group attributes that differ between two renders of the same content.
PER_RENDER = ("created", "completed", "store_id")


# ------------------------------------------------------------------------------------------
# Running commands
# ------------------------------------------------------------------------------------------


@dataclass
class Ran:
    code: int | None  # None: killed for running past its limit
    out: str
    err: str
    seconds: float


def train_args(**changes: str) -> list[str]:
    """``TRAIN`` as command-line arguments, with ``changes`` (``workers="1"``)."""
    options = {**TRAIN, **{f"--{k.replace('_', '-')}": v for k, v in changes.items()}}
    return [*(x for item in options.items() for x in item), "--quiet"]


def command(tool: str, *args: Any) -> list[str]:
    module = {
        "anomalygen": "anomalygen_cli.anomalygen_cli",
        "resynth": "anomalygen_cli.resynth_cli",
    }[tool]
    return [sys.executable, "-m", module, *map(str, args)]


def environment() -> dict[str, str]:
    # One thread: the battery measures behaviour, and a shared machine stays usable.
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def run(argv: list[str], limit: float = LIMIT_S) -> Ran:
    t0 = time.monotonic()
    child = subprocess.Popen(
        argv, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = child.communicate(timeout=limit)
        code: int | None = child.returncode
    except subprocess.TimeoutExpired:
        kill_group(child)
        out, err = child.communicate()
        code = None
    return Ran(code, out, err, time.monotonic() - t0)


def kill_group(child: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)


def wait_for(child: subprocess.Popen, marker: Path) -> float:
    """Wait until ``marker`` exists (the command got past its start-up) or ``child`` ends;
    returns when (monotonic seconds)."""
    deadline = time.monotonic() + LIMIT_S
    while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return time.monotonic()


def work_seconds(argv: list[str], marker: Path) -> tuple[Ran, float]:
    """Run ``argv`` to its end: the result, and the seconds from ``marker`` appearing (the
    store or run folder created: Python and the imports are done) to the end."""
    t0 = time.monotonic()
    child = subprocess.Popen(
        argv, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    started = wait_for(child, marker)
    out, err = child.communicate(timeout=LIMIT_S)
    end = time.monotonic()
    return Ran(child.returncode, out, err, end - t0), end - started


def run_killed(argv: list[str], marker: Path, after: float) -> None:
    """Start ``argv`` and kill -9 its main process ``after`` seconds after ``marker`` appears
    (or let it end); what it started is killed too once it is gone (orphans are not the
    point here)."""
    child = subprocess.Popen(
        argv, cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    started = wait_for(child, marker)
    try:
        child.wait(timeout=max(0.0, after - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        os.kill(child.pid, signal.SIGKILL)  # the crash: the main process only
        child.wait()
    time.sleep(0.2)  # the render's workers see their parent gone and exit without writing
    kill_group(child)


def one_line_error(ran: Ran, *fragments: str, notes: str | None = None) -> str | None:
    """None if ``ran`` failed with exit 1 and one ``error:`` line holding ``fragments`` (after
    one-line notes that start with ``notes``: ``"skipped "``)."""
    lines = [line for line in ran.err.strip().splitlines() if line.strip()]
    if notes is not None:
        lines = [line for line in lines if not line.startswith(notes)]
    if ran.code is None:
        return f"hung (killed after {LIMIT_S:.0f} s)"
    if ran.code != 1 or len(lines) != 1 or not lines[0].startswith("error: "):
        return f"exit {ran.code}, stderr {ran.err.strip()[:300]!r}"
    if "internal error" in lines[0] or "Traceback" in ran.err:
        return f"not a user error: {lines[0][:300]}"
    missing = [f for f in fragments if f not in lines[0]]
    return f"{lines[0][:300]!r} lacks {missing}" if missing else None


# ------------------------------------------------------------------------------------------
# Stores and files
# ------------------------------------------------------------------------------------------


def write_sources(folder: Path, count: int = 6) -> Path:
    from PIL import Image

    from tests.synthetic import make_fundus

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        rgb = make_fundus(96 + 16 * k, seed=k, cut=k % 2 == 1)
        Image.fromarray(rgb).save(folder / f"normal_{k}.png")
    return folder


def objects(store: Path) -> dict[str, str]:
    """sha256 of every file of a store but the group's zarr.json; its attributes apart."""
    out = {
        p.relative_to(store).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.relative_to(store).as_posix() != "zarr.json"
    }
    attrs = json.loads((store / "zarr.json").read_text())["attributes"]
    out["zarr.json attributes"] = json.dumps(
        {k: v for k, v in attrs.items() if k not in PER_RENDER}, sort_keys=True
    )
    return out


def differences(a: dict[str, str], b: dict[str, str]) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return f"{len(keys)} object(s) differ (first: {keys[0]})" if keys else ""


@dataclass
class Family:
    name: str
    meaning: str
    passed: int = 0
    trials: int = 0
    failures: list[str] = field(default_factory=list)
    note: str = ""  # what the trials interrupted, e.g. "14 mid-render"

    def record(self, label: str, failure: str | None) -> None:
        self.trials += 1
        if failure:
            self.failures.append(f"{self.name}: {label}: {failure}")
        else:
            self.passed += 1

    def line(self) -> str:
        note = f" ({self.note})" if self.note else ""
        return f"{self.name}: {self.passed}/{self.trials} {self.meaning}{note}"


@dataclass
class Lab:
    """The battery's shared inputs, made once under ``root``."""

    root: Path
    rng: random.Random
    sources: Path = field(init=False)
    reference: Path = field(init=False)
    render_s: float = field(init=False)  # the reference render, from its store's creation
    run_dir: Path | None = None  # a trained run (the training family's reference)

    def __post_init__(self) -> None:
        self.sources = write_sources(self.root / "sources")
        self.reference = self.root / "reference.zarr"
        ran, self.render_s = work_seconds(self.render(self.reference), self.reference / "zarr.json")
        if ran.code != 0:
            raise SystemExit(f"chaos: the reference render failed: {ran.err.strip()}")

    def render(self, out: Path, *extra: Any) -> list[str]:
        return command("anomalygen", "render", "--src", self.sources, "--out", out,
                       "--workers", "2", *RENDER, *extra)  # fmt: skip

    def copy(self, name: str) -> Path:
        target = self.root / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.reference, target)
        return target


# ------------------------------------------------------------------------------------------
# Families
# ------------------------------------------------------------------------------------------


def render_kills(lab: Lab, trials: int) -> Family:
    family = Family("render kill -9", "byte-identical after resume")
    expected = objects(lab.reference)
    phases = {"before the first shard": 0, "mid-render": 0, "after the last shard": 0}
    for k in range(trials):
        out = lab.root / f"killed-{k}.zarr"
        after = lab.rng.uniform(0.0, lab.render_s)
        run_killed(lab.render(out), out / "zarr.json", after)
        flags = len(list((out / "done" / "c").iterdir())) if (out / "done" / "c").is_dir() else 0
        phase = "before the first shard" if flags == 0 else "mid-render" if flags < 24 else "after"
        phases[phase if phase != "after" else "after the last shard"] += 1
        ran = run(lab.render(out))
        failure = f"resume exit {ran.code}: {ran.err.strip()[:200]}" if ran.code != 0 else None
        failure = failure or differences(objects(out), expected) or None
        family.record(f"killed after {after:.2f} s", failure)
        shutil.rmtree(out, ignore_errors=True)
    family.note = "killed " + ", ".join(f"{n} {phase}" for phase, n in phases.items() if n)
    return family


def training_kills(lab: Lab, trials: int) -> Family:
    family = Family("training kill -9", "weights identical after resume: tensor bytes and header")
    store = lab.reference

    def train(run_dir: Path, *extra: str) -> list[str]:
        return command("resynth", "train", "--data", store, "--out", run_dir, *train_args(), *extra)

    reference = lab.root / "run-reference"
    ran, work_s = work_seconds(train(reference), reference / "config.json")
    if ran.code != 0:
        family.record("reference run", f"exit {ran.code}: {ran.err.strip()[:300]}")
        return family
    weights = ("stage1.safetensors", "stage2.safetensors")
    expected = {name: weights_content(reference / name) for name in weights}
    saved = 0
    for k in range(trials):
        run_dir = lab.root / f"run-killed-{k}"
        after = lab.rng.uniform(0.0, work_s)
        run_killed(train(run_dir), run_dir / "config.json", after)
        states = list((run_dir / "state").glob("*.json")) if (run_dir / "state").is_dir() else []
        done = (run_dir / "stage2.safetensors").exists()
        saved += bool(states) and not done
        resumed = run(train(run_dir, "--resume"))
        if resumed.code != 0:
            family.record(f"killed after {after:.2f} s", f"resume: {resumed.err.strip()[:300]}")
            continue
        same = all(weights_content(run_dir / n) == expected[n] for n in weights)
        family.record(f"killed after {after:.2f} s", None if same else "weights differ")
        shutil.rmtree(run_dir, ignore_errors=True)
    lab.run_dir = reference  # a trained run for the inputs family
    family.note = f"{saved} killed mid-training, resumed from a saved step"
    return family


def weights_content(path: Path) -> tuple[str, bytes]:
    """A safetensors file's content: its header as canonical JSON, and its tensor data."""
    data = path.read_bytes()
    start = 8 + int.from_bytes(data[:8], "little")
    header = json.loads(data[8:start])
    return json.dumps(header, sort_keys=True), data[start:]


def _damages(lab: Lab) -> Iterator[tuple[str, Callable[[Path], None]]]:
    """``(label, damage(store))`` pairs: every array, lost, corrupted, truncated, swapped."""
    from anomalygen.store import shard_key

    shards = 24
    ndims = {"image": 4, "mask": 3, "digests": 2, "normals": 4, "normals_fov": 3,
             "normals_digests": 2, "meta": 2, "normals_info": 2}  # fmt: skip
    sample_arrays = ("image", "mask", "target", "source", "area", "lesions", "meta", "digests")
    pool_arrays = ("normals", "normals_fov", "normals_info", "normals_digests")

    def key(name: str, shard: int) -> str:
        return shard_key(name, shard, ndim=ndims.get(name, 1))

    def lose(name: str, shard: int) -> Callable[[Path], None]:
        return lambda store: (store / key(name, shard)).unlink()

    def flip(name: str, shard: int) -> Callable[[Path], None]:
        def damage(store: Path) -> None:
            path = store / key(name, shard)
            data = bytearray(path.read_bytes())
            data[lab.rng.randrange(min(len(data), 200))] ^= 0x24
            path.write_bytes(bytes(data))

        return damage

    def truncate(name: str, shard: int) -> Callable[[Path], None]:
        def damage(store: Path) -> None:
            path = store / key(name, shard)
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])

        return damage

    def swap(name: str, shard: int) -> Callable[[Path], None]:
        other = (shard + 1) % shards
        return lambda store: shutil.copy(store / key(name, other), store / key(name, shard))

    for name in sample_arrays:
        yield f"{name} object lost", lose(name, lab.rng.randrange(shards))
    for name in pool_arrays:
        yield f"{name} object lost", lose(name, 0)
    for name in ("image", "mask", "meta", "normals"):
        shard = 0 if name == "normals" else lab.rng.randrange(shards)
        yield f"{name} byte flipped", flip(name, shard)
    yield "image shard truncated", truncate("image", lab.rng.randrange(shards))
    yield "image object swapped", swap("image", lab.rng.randrange(shards))
    yield "meta object swapped", swap("meta", lab.rng.randrange(shards))
    yield "done flag lost", lose("done", lab.rng.randrange(shards))


def _wrong_reads(damaged: Path, reference: Path) -> str | None:
    """None if every read of the damaged store raises StoreError or returns the reference's
    data (images, masks, meta, normals); else the first read that returned other data."""
    import numpy as np

    from anomalygen import open_store
    from anomalygen.errors import StoreError

    good, bad = open_store(reference), open_store(damaged)
    reads: list[tuple[str, Callable[[Any], Any]]] = [
        (f"sample {i}", lambda s, i=i: s[i]) for i in range(len(good))
    ]
    reads += [(f"meta {i}", lambda s, i=i: s.meta(i)) for i in range(len(good))]
    reads += [(f"normal {j}", lambda s, j=j: s.normals[j]) for j in range(len(good.normals))]
    for label, read in reads:
        try:
            got = read(bad)
        except StoreError:
            continue
        want = read(good)
        same = (
            got == want
            if isinstance(want, dict)
            else all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
        )
        if not same:
            return f"{label} read wrong data without an error"
    return None


def damaged_stores(lab: Lab) -> Family:
    family = Family(
        "damaged store",
        "caught (no wrong data read, verify reports it) and repaired byte-identical",
    )
    expected = objects(lab.reference)
    for label, damage in _damages(lab):
        store = lab.copy("damaged.zarr")
        damage(store)
        failure = _wrong_reads(store, lab.reference)
        if (
            failure is None
            and run(command("anomalygen", "verify", store, "--full", "-q")).code != 1
        ):
            failure = "verify did not report it"
        if failure is None:
            ran = run(command("anomalygen", "verify", store, "--repair", "-q"))
            failure = f"repair exit {ran.code}: {ran.err.strip()[:200]}" if ran.code != 0 else None
            failure = failure or differences(objects(store), expected) or None
        family.record(label, failure)
    return family


def _edited(lab: Lab, name: str, key: str, value: Any) -> Path:
    store = lab.copy(name)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"][key] = value
    (store / "zarr.json").write_text(json.dumps(meta))
    return store


def _trained_run(lab: Lab) -> Path:
    if lab.run_dir is None:
        lab.run_dir = lab.root / "run-inputs"
        args = train_args(steps="2")
        run(command("resynth", "train", "--data", lab.reference, "--out", lab.run_dir, *args))
    return lab.run_dir


def _bad_inputs(lab: Lab) -> Iterator[tuple[str, Callable[[], str | None]]]:
    root = lab.root
    photo = lab.sources / "normal_0.png"

    def fifo_source() -> str | None:
        src = root / "fifo-src"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(lab.sources, src)
        os.mkfifo(src / "x.jpg")
        ran = run(command("anomalygen", "render", "--src", src, "--out", root / "fifo.zarr",
                          "--workers", "1", "--report", root / "skipped.txt", *RENDER))  # fmt: skip
        report = (root / "skipped.txt").read_text() if (root / "skipped.txt").exists() else ""
        if ran.code != 0 or "x.jpg\tis a FIFO (named pipe), not a regular file" not in report:
            return f"exit {ran.code}, report {report!r}, stderr {ran.err.strip()[:200]!r}"
        return None

    def fifo_list() -> str | None:
        listing = root / "list.txt"
        with contextlib.suppress(FileNotFoundError):
            listing.unlink()
        os.mkfifo(listing)
        ran = run(
            command("anomalygen", "render", "--src", listing, "--out", root / "l.zarr", *RENDER)
        )
        return one_line_error(ran, "FIFO")

    def bomb() -> str | None:
        from tests.badfiles import huge_png_header

        src = root / "bomb-src"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(lab.sources, src)
        (src / "bomb.png").write_bytes(huge_png_header(100_000, 100_000))
        ran = run(command("anomalygen", "render", "--src", src, "--out", root / "bomb.zarr",
                          "--workers", "1", "--strict", *RENDER))  # fmt: skip
        return one_line_error(
            ran, "bomb.png: image too large (10000 megapixels", "decompression bomb"
        )

    yield "FIFO among the sources (skipped, no hang)", fifo_source
    yield "FIFO as the --src list file", fifo_list
    yield "decompression bomb among the sources", bomb
    hostile = [("shard_size", 0), ("n", -5), ("n", 10**15), ("format_version", True),
               ("size", -1), ("created", "x" * 50_000_000)]  # fmt: skip
    for key, value in hostile:
        shown = repr(value) if not isinstance(value, str) else f"a {len(value):,}-character string"

        def info(key: str = key, value: Any = value) -> str | None:
            store = _edited(lab, "hostile.zarr", key, value)
            fragment = "format version" if key == "format_version" else f"attribute {key!r}"
            for tool_args in (("info", store), ("verify", store)):
                failure = one_line_error(run(command("anomalygen", *tool_args)), fragment)
                if failure:
                    return f"{tool_args[0]}: {failure}"
            return None

        yield f"store attribute {key} = {shown}", info
    yield from _more_bad_inputs(lab, photo)


def _more_bad_inputs(lab: Lab, photo: Path) -> Iterator[tuple[str, Callable[[], str | None]]]:
    root = lab.root

    def huge_size() -> str | None:
        out = root / "huge.zarr"
        ran = run(command("anomalygen", "render", "--src", lab.sources, "--out", out,
                          "--n", "8", "--size", "100000", "--quiet"))  # fmt: skip
        return one_line_error(ran, "--size: must be at most 4,096") or (
            "the store was created" if out.exists() else None
        )

    def link_in_store() -> str | None:
        store = lab.copy("linked.zarr")
        outside = root / "outside"
        shutil.rmtree(outside, ignore_errors=True)
        shutil.move(store / "image" / "c", outside)
        os.symlink(outside, store / "image" / "c")
        meta = json.loads((store / "zarr.json").read_text())
        del meta["attributes"]["completed"]
        (store / "zarr.json").write_text(json.dumps(meta))
        (store / "done" / "c" / "1").unlink()  # shard 1 to be rendered again
        shutil.rmtree(outside / "1")
        ran = run(lab.render(store))
        written = (outside / "1").exists()
        return one_line_error(ran, "image/c is a link to") or ("wrote outside" if written else None)

    def damaged_weights(tool: str) -> Callable[[], str | None]:
        def check() -> str | None:
            run_dir = root / f"damaged-run-{tool}"
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.copytree(_trained_run(lab), run_dir)
            weights = run_dir / "stage2.safetensors"
            data = bytearray(weights.read_bytes())
            start = 8 + int.from_bytes(data[:8], "little")
            for k in range(start + 64, start + 128):
                data[k] ^= 0x40
            weights.write_bytes(bytes(data))
            return one_line_error(_score(tool, run_dir, photo), "is damaged")

        return check

    def absurd_width() -> str | None:
        run_dir = root / "wide-run"
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(_trained_run(lab), run_dir)
        config = json.loads((run_dir / "config.json").read_text())
        config["network"]["loc_width"] = 10**8
        (run_dir / "config.json").write_text(json.dumps(config))
        return one_line_error(_score("predict", run_dir, photo), "loc_width: must be at most")

    def train_on_damage() -> str | None:
        store = lab.copy("blank.zarr")
        for k in range(24):
            (store / "image" / "c" / str(k) / "0" / "0" / "0").unlink()
        args = train_args(workers="1", stage="2", rec_features="none")  # a DataLoader worker
        ran = run(command("resynth", "train", "--data", store, "--out", root / "blank-run", *args))
        return one_line_error(ran, "is damaged: array 'image'", "--repair")

    def predict_fifo() -> str | None:
        fifo = root / "photo.jpg"
        with contextlib.suppress(FileNotFoundError):
            fifo.unlink()
        os.mkfifo(fifo)
        ran = _score("predict", _trained_run(lab), fifo)
        return one_line_error(ran, "photo.jpg: is a FIFO", notes="skipped photo.jpg: is a FIFO")

    yield "--size 100000", huge_size
    yield "a link leaving the store, on resume", link_in_store
    yield "damaged stage2.safetensors (evaluate)", damaged_weights("evaluate")
    yield "damaged stage2.safetensors (predict)", damaged_weights("predict")
    yield "absurd width in a run's config.json", absurd_width
    yield "training on a store whose images are lost", train_on_damage
    yield "predict on a FIFO", predict_fifo


def _score(tool: str, run_dir: Path, photo: Path) -> Ran:
    root = run_dir.parent
    if tool == "predict":
        return run(command("resynth", "predict", photo, "--checkpoint", run_dir,
                           "--out", root / "pred", "-q"))  # fmt: skip
    layout = root / "layout"
    for kind in ("normal", "abnormal"):
        (layout / kind).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, layout / kind / photo.name)
    return run(command("resynth", "evaluate", "--checkpoint", run_dir, "--dataset", "folder",
                       "--root", layout, "--out", root / "eval", "-q"))  # fmt: skip


def bad_inputs(lab: Lab) -> Family:
    family = Family("bad input", "one-line errors or reasons, none hung")
    for label, check in _bad_inputs(lab):
        try:
            failure = check()
        except Exception as err:  # the battery's own setup failed: count it, say why
            failure = f"{type(err).__name__}: {err}"
        family.record(label, failure)
    return family


def concurrent_renders(lab: Lab, trials: int) -> Family:
    """A longer render (768 samples), so that the second starts while the first still runs."""
    from anomalygen.render.lock import lock_holder
    from anomalygen.store import location

    family = Family("concurrent render", "second render refused, first byte-identical")
    long = ["--n", "768"]
    reference = lab.root / "long-reference.zarr"
    ran = run(lab.render(reference, *long))
    if ran.code != 0:
        family.record("reference", f"exit {ran.code}: {ran.err.strip()[:200]}")
        return family
    expected = objects(reference)
    for k in range(trials):
        out = lab.root / f"busy-{k}.zarr"
        first = subprocess.Popen(lab.render(out, *long), cwd=ROOT, env=environment(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + LIMIT_S
        while lock_holder(location(out)) is None and first.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        delay = lab.rng.uniform(0.0, 0.3) * ran.seconds
        time.sleep(delay)
        second = run(lab.render(out, *long))
        first.wait(timeout=LIMIT_S)
        failure = one_line_error(second, "another render is writing this store")
        if failure is None and first.returncode != 0:
            failure = f"the first render failed (exit {first.returncode})"
        failure = failure or (differences(objects(out), expected) or None)
        family.record(f"second started {delay:.1f} s after the first took the lock", failure)
        shutil.rmtree(out, ignore_errors=True)
    return family


# ------------------------------------------------------------------------------------------


FAMILIES = ("render", "training", "damage", "inputs", "concurrent")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--render-trials", type=int, default=20)
    parser.add_argument("--train-trials", type=int, default=8)
    parser.add_argument("--concurrent-trials", type=int, default=4)
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help=f"comma-separated, of {', '.join(FAMILIES)}")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    chosen = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(chosen) - set(FAMILIES))
    if unknown:
        parser.error(f"--families: unknown {', '.join(unknown)}")
    root = Path(tempfile.mkdtemp(prefix="chaos-", dir=args.tmp))
    families: list[Family] = []
    try:
        lab = Lab(root, random.Random(args.seed))
        runs: dict[str, Callable[[], Family]] = {
            "render": lambda: render_kills(lab, args.render_trials),
            "training": lambda: training_kills(lab, args.train_trials),
            "damage": lambda: damaged_stores(lab),
            "inputs": lambda: bad_inputs(lab),
            "concurrent": lambda: concurrent_renders(lab, args.concurrent_trials),
        }
        for name in FAMILIES:
            if name in chosen:
                families.append(runs[name]())
                print(families[-1].line(), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for family in families:
        for failure in family.failures:
            print(f"failed: {failure}", file=sys.stderr)
    return 0 if all(f.passed == f.trials for f in families) else 1


if __name__ == "__main__":
    sys.exit(main())
