"""Tests of resynth_models.train: schedule, configs, the training step (a fixed batch is
overfitted), exact resume, the frozen E_r, run-folder rules, and DDP through torchrun."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from anomalygen.config import from_dict, to_dict  # noqa: E402
from anomalygen.errors import ConfigError, StoreError  # noqa: E402
from resynth_models import checkpoint as ckpt  # noqa: E402
from resynth_models.networks import PRESETS, ReconstructionNet, ReSynthDetect  # noqa: E402
from resynth_models.train import (  # noqa: E402
    TRAIN_PRESETS,
    StepInfo,
    TrainConfig,
    TrainingInterrupted,
    duration_steps,
    learning_rate,
    make_configs,
    make_optimizer,
    parse_duration,
    resource_notes,
    resume_configs,
    train,
    train_step,
    training_size,
)
from tests.synthetic import render_tiny_store  # noqa: E402

TINY_NET = {"rec_width": 4, "rec_depth": 3, "loc_width": 4, "loc_depth": 3}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny(**overrides):
    """Tiny training: 32 px from a 64 px store, batch 2, 4 steps per stage."""
    fields = dict(
        size=32,
        batch_size=2,
        steps=4,
        workers=0,
        lr=1e-3,
        min_lr=1e-4,
        warmup="1",
        log_interval=1,
        ckpt_interval=2,
        val_interval=2,
        val_samples=8,
        val_fraction=0.34,  # 2 of the 6 shards
    )
    network = dict(TINY_NET, **overrides.pop("network", {}))
    fields.update(overrides)
    return make_configs("small", network, **fields)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real store made by the renderer: 24 samples of 64 px in 6 shards, 4 normals."""
    from anomalygen.generator import GeneratorConfig

    # Larger, more frequent lesions than the paper's, so that they survive 64 -> 32 px.
    gen = GeneratorConfig(p_normal=0.25, crop_size=(0.15, 0.4))
    root = tmp_path_factory.mktemp("train_store")
    return str(render_tiny_store(root, 24, cut=(2,), config=gen))


def weights(path: Path | str) -> dict[str, torch.Tensor]:
    return ckpt.load_weights(path)[0]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------
# Schedule and configuration


def test_learning_rate_warmup_then_cosine() -> None:
    kw = dict(lr=1e-3, min_lr=2e-4, warmup=10, total=110)
    lrs = [learning_rate(s, **kw) for s in range(111)]
    assert lrs[0] == pytest.approx(1e-3 / 11)
    assert all(a < b for a, b in itertools.pairwise(lrs[:11]))  # linear rise
    assert lrs[10] == pytest.approx(1e-3)  # peak after the warm-up
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # then decays
    assert lrs[60] == pytest.approx(6e-4)  # cosine midpoint: (lr + min_lr) / 2
    assert lrs[110] == pytest.approx(2e-4)
    assert learning_rate(500, **kw) == pytest.approx(2e-4)
    assert learning_rate(0, lr=1.0, min_lr=0.5, warmup=0, total=10) == 1.0


def test_parse_duration() -> None:
    assert parse_duration("500") == (500, "steps")
    assert parse_duration("50ep") == (50, "epochs")
    assert parse_duration("2.5 epochs") == (2.5, "epochs")
    assert parse_duration("5%") == (5, "percent")
    for bad in ("abc", "-1", "150%", "1.5"):
        with pytest.raises(ConfigError, match="--warmup"):
            parse_duration(bad)
    assert duration_steps("50ep", steps_per_epoch=16.75, total_steps=5000) == 838
    assert duration_steps("5%", steps_per_epoch=1, total_steps=300) == 15
    assert duration_steps("7", steps_per_epoch=1, total_steps=300) == 7


def test_make_configs_and_presets() -> None:
    train_cfg, net = make_configs()
    assert (train_cfg.lr, train_cfg.min_lr, train_cfg.warmup) == (5e-5, 2.5e-5, "50ep")  # paper
    assert net.rec_width == 32 and train_cfg.epochs == 300 and train_cfg.steps is None
    small, small_net = make_configs("small")
    assert small.size is None and small.steps is not None and small.epochs is None
    assert small_net.rec_depth == 4
    assert make_configs("small", epochs=3)[0].steps is None
    assert make_configs("default", steps=7)[0].epochs is None
    assert make_configs(network={"rec_features": "none"})[1].rec_features == "none"
    with pytest.raises(ConfigError, match="not both"):
        make_configs(epochs=1, steps=2)
    with pytest.raises(ConfigError, match="unknown preset"):
        make_configs("huge")
    with pytest.raises(ConfigError, match="--min-lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3)
    with pytest.raises(ConfigError, match="--stage1-from"):
        TrainConfig(stage="all", stage1_from="runs/a")
    with pytest.raises(ConfigError, match="rec_features"):
        make_configs(network={"rec_features": "magic"})
    # JSON round trip, as config.json keeps it
    assert from_dict(TrainConfig, json.loads(json.dumps(to_dict(small)))) == small


# ---------------------------------------------------------------------------------------------
# The training step overfits a fixed batch


def _fixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    import cv2

    from tests.synthetic import make_fundus

    images = [cv2.resize(make_fundus(64, seed=s), (32, 32), interpolation=cv2.INTER_AREA)
              for s in (0, 1)]  # fmt: skip
    x = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images])
    masks = torch.zeros(2, 32, 32)
    masks[0, 8:16, 8:20] = 1
    masks[1, 18:26, 6:12] = 1
    x = torch.where(masks[:, None] == 1, torch.tensor([0.9, 0.9, 0.2])[:, None, None], x)
    return x, masks


def test_train_step_overfits_stage1() -> None:
    x, _ = _fixed_batch()
    torch.manual_seed(0)
    net = ReconstructionNet(4, 3)
    opt = make_optimizer(net.parameters(), TrainConfig(lr=1e-2), torch.device("cpu"))
    losses = [float(train_step(net, opt, x, stage=1)[0]) for _ in range(40)]
    assert losses[-1] < 0.25 * losses[0]


def test_train_step_overfits_stage2_and_keeps_e_r() -> None:
    x, masks = _fixed_batch()
    torch.manual_seed(0)
    _, net_cfg = tiny()
    model = ReSynthDetect(net_cfg)
    frozen = {k: v.clone() for k, v in model.rec_net.state_dict().items()}
    opt = make_optimizer(model.trainable_parameters(), TrainConfig(lr=1e-2), torch.device("cpu"))
    model.train()
    losses = [float(train_step(model, opt, x, masks, stage=2)[0]) for _ in range(30)]
    assert losses[-1] < 0.1 * losses[0]
    assert not model.rec_net.training
    assert_same_weights(frozen, model.rec_net.state_dict())
    probs = model.anomaly_map(x)
    assert probs[masks == 1].mean() > 0.5 > probs[masks == 0].mean()


# ---------------------------------------------------------------------------------------------
# Whole runs on a real store


def _stopper(at: tuple[int, int]):
    def on_step(info: StepInfo) -> bool:
        return (info.stage, info.step) == at

    return on_step


def _run_files_are_json_or_safetensors(run: Path) -> None:
    for path in run.rglob("*"):
        if path.is_dir() or "tb" in path.relative_to(run).parts:  # TensorBoard's own events
            continue
        data = path.read_bytes()
        if path.suffix == ".safetensors":
            n = int.from_bytes(data[:8], "little")
            json.loads(data[8 : 8 + n])  # a JSON header, not a pickle
        elif path.suffix == ".json":
            json.loads(data)
        elif path.suffix == ".jsonl":
            for line in data.decode().splitlines():
                json.loads(line)
        else:
            raise AssertionError(f"unexpected file in the run folder: {path}")


def test_resume_gives_identical_weights(store: str, tmp_path: Path) -> None:
    """Straight run (0 workers) == interrupted twice and resumed (2 workers), bit for bit."""
    config, net = tiny()
    frozen_checks = []

    def watch(info: StepInfo) -> None:
        if info.stage == 2:
            rec = info.model.rec_net
            frozen_checks.append(
                not rec.training and not any(p.requires_grad for p in rec.parameters())
            )

    straight = train(store, tmp_path / "a", config, net, progress=False, on_step=watch)
    assert [s.stage for s in straight.stages] == [1, 2]
    assert frozen_checks == [True] * 4  # E_r in eval mode and without gradients

    a = tmp_path / "a"
    # E_r frozen: the detector holds exactly the stage-1 weights
    s1, s2 = weights(a / "stage1.safetensors"), weights(a / "stage2.safetensors")
    for k, v in s1.items():
        assert torch.equal(v, s2[f"rec_net.{k}"]), k
    val = straight.stages[1].validation
    assert val is not None and 0.0 <= val["val_auroc"] <= 1.0 and 0.0 <= val["val_aupr"] <= 1.0
    _run_files_are_json_or_safetensors(a)

    b = tmp_path / "b"
    config2, _ = tiny(workers=2)
    with pytest.raises(TrainingInterrupted, match="step 2 of 4"):
        train(store, b, config2, net, progress=False, on_step=_stopper((1, 2)))
    assert not (b / "stage1.safetensors").exists()
    with pytest.raises(TrainingInterrupted, match="stage 2 saved at step 3"):
        train(store, b, config2, net, resume=True, progress=False, on_step=_stopper((2, 3)))
    resumed = train(store, b, config2, net, resume=True, progress=False)
    assert [s.start_step for s in resumed.stages] == [0, 3] and resumed.stages[0].skipped

    assert_same_weights(s1, weights(b / "stage1.safetensors"))
    assert_same_weights(s2, weights(b / "stage2.safetensors"))
    records = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    for stage in (1, 2):
        steps = [r["step"] for r in records if r["stage"] == stage and "loss" in r]
        assert steps == [1, 2, 3, 4]  # records after the saved step were dropped on resume
    vals = [r["val_auroc"] for r in records if "val_auroc" in r]
    straight_vals = [
        json.loads(line).get("val_auroc")
        for line in (a / "metrics.jsonl").read_text().splitlines()
        if "val_auroc" in line
    ]
    assert vals == straight_vals

    # a complete run: again without --resume is refused, with --resume there is nothing to do
    with pytest.raises(ConfigError, match="stage 1 is complete; use --resume"):
        train(store, a, config, net, progress=False)
    again = train(store, a, config, net, resume=True, progress=False)
    assert [s.skipped for s in again.stages] == ["already complete"] * 2

    # the detector of the run
    det = ckpt.load_detector(a)
    assert det.size == 32 and det.clahe is True and det.scoring == "localization"
    assert det.anomaly_map(torch.rand(1, 3, 32, 32)).shape == (1, 32, 32)


def test_run_folder_rules(store: str, tmp_path: Path) -> None:
    config, net = tiny(steps=2)
    stage2, _ = tiny(steps=2, stage="2")
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"stage1\.safetensors not found"):
        train(store, run, stage2, net, progress=False)
    assert not run.exists()  # nothing written for a refused run

    stage1, _ = tiny(steps=2, stage="1")
    result = train(store, run, stage1, net, progress=False)
    assert [s.stage for s in result.stages] == [1]
    assert not (run / "stage2.safetensors").exists()
    with pytest.raises(StoreError, match="scoring 'reconstruction'"):
        ckpt.load_detector(run)
    assert ckpt.load_detector(run, scoring="reconstruction").scoring == "reconstruction"
    # stage 2 in a later invocation (only --stage differs)
    train(store, run, stage2, net, progress=False)
    assert (run / "stage2.safetensors").exists()

    other, _ = tiny(steps=2, lr=5e-3)
    with pytest.raises(ConfigError, match=r"different configuration \(lr 0.001 -> 0.005\)"):
        train(store, run, other, net, progress=False)
    with pytest.raises(ConfigError, match="choose one"):
        train(store, run, other, net, resume=True, overwrite=True, progress=False)
    train(store, run, other, net, overwrite=True, progress=False)
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 5e-3

    stranger = tmp_path / "not_a_run"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a resynth run folder"):
        train(store, stranger, config, net, overwrite=True, progress=False)
    assert (stranger / "notes.txt").exists()

    # --stage1-from: a new run reuses the stage-1 network of another
    reuse = tmp_path / "reuse"
    from_cfg, _ = tiny(steps=2, stage="2", stage1_from=str(run))
    train(store, reuse, from_cfg, net, progress=False)
    assert_same_weights(weights(run / "stage1.safetensors"), weights(reuse / "stage1.safetensors"))


@pytest.mark.parametrize("mode", ["random", "none"])
def test_modes_without_stage1_skip_it(store: str, tmp_path: Path, mode: str) -> None:
    config, net = tiny(steps=2, network={"rec_features": mode}, val_fraction=0.0)
    result = train(store, tmp_path / mode, config, net, progress=False)
    assert [s.stage for s in result.stages] == [2] and "skipping stage 1" in result.notes[0]
    assert not (tmp_path / mode / "stage1.safetensors").exists()
    det = ckpt.load_detector(tmp_path / mode)
    assert det.network.rec_features == mode


def test_bad_store_inputs(store: str, tmp_path: Path) -> None:
    config, net = tiny(steps=1)
    with pytest.raises(StoreError, match="--data"):
        train(tmp_path / "missing.zarr", tmp_path / "r", config, net, progress=False)
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    meta = json.loads((copy / "zarr.json").read_text())
    meta["attributes"]["pools"] = {}  # a store without normals: refused on open
    (copy / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="attribute 'pools' must map 'normals'"):
        train(copy, tmp_path / "r", config, net, progress=False)
    meta["attributes"]["format_version"] = 99
    (copy / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="version 99"):
        train(copy, tmp_path / "r", config, net, progress=False)
    bad_size, _ = tiny(size=30)
    with pytest.raises(ConfigError, match="multiples of 4"):
        train(store, tmp_path / "r", bad_size, net, progress=False)
    if not torch.cuda.is_available():
        cuda, _ = tiny(device="cuda")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            train(store, tmp_path / "r", cuda, net, progress=False)


# ---------------------------------------------------------------------------------------------
# Several processes: torchrun, gloo on the CPU


@pytest.mark.slow
def test_torchrun_two_processes_match_one(store: str, tmp_path: Path) -> None:
    """2 processes x batch 1 (DDP, gloo) train like 1 process x batch 2: same data, averaged
    gradients; equal up to float summation order (lr 1e-3, 3 steps)."""
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun not found")
    common = ["--stage", "1", "--steps", "3", "--size", "32", "--workers", "0", "--lr", "1e-3",
              "--min-lr", "1e-4", "--warmup", "1", "--preset", "small", "--rec-width", "4",
              "--rec-depth", "3", "--loc-width", "4", "--loc-depth", "3", "--device", "cpu",
              "--quiet"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    elsewhere = tmp_path / "project"  # the README's launch from another project's folder,
    (elsewhere / "cli").mkdir(parents=True)  # one with a cli/ package of its own
    (elsewhere / "cli" / "__init__.py").write_text("raise SystemExit('wrong cli package')\n")
    proc = subprocess.run(
        [*torchrun, "--nproc_per_node", "2", "-m", "anomalygen_cli.resynth_cli", "train",
         "--data", store, "--out", str(tmp_path / "ddp"), "--batch-size", "1", *common],
        env=env, capture_output=True, text=True, timeout=300, cwd=elsewhere,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("run folder:") == 1, proc.stdout  # rank 0 alone prints
    config, net = tiny(stage="1", steps=3, batch_size=2, warmup="1", lr=1e-3)
    train(store, tmp_path / "one", config, net, progress=False)
    ddp, one = (
        weights(tmp_path / "ddp/stage1.safetensors"),
        weights(tmp_path / "one/stage1.safetensors"),
    )
    for k in one:  # AdamW divides by sqrt(v): summation-order noise grows to ~lr/100
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-3, atol=1e-4)
    info = json.loads((tmp_path / "ddp/state/stage1.json").read_text())["info"]
    assert info["world_size"] == 2 and info["global_batch"] == 2


def test_stage1_steps(store: str, tmp_path: Path) -> None:
    """--stage1-steps sets stage 1's length alone; --steps or --epochs clear a preset's."""
    config, net = tiny(steps=3, stage1_steps=2, val_fraction=0.0)
    assert (config.steps, config.stage1_steps) == (3, 2)
    result = train(store, tmp_path / "run", config, net, progress=False)
    assert [(s.stage, s.total_steps) for s in result.stages] == [(1, 2), (2, 3)]
    with pytest.raises(ConfigError, match="--stage1-steps"):
        TrainConfig(steps=3, stage1_steps=0)
    small = TRAIN_PRESETS["small"]
    if small.get("stage1_steps") is not None:
        assert make_configs("small", steps=20)[0].stage1_steps is None
        assert make_configs("small", epochs=2)[0].stage1_steps is None


# ---------------------------------------------------------------------------------------------
# Training size, resuming with the run's configuration, notes on the machine


def test_training_size_is_the_store_s_unless_given(store: str, tmp_path: Path) -> None:
    assert training_size(TrainConfig(), 64) == 64
    assert training_size(TrainConfig(size=32), 64) == 32
    with pytest.raises(ConfigError, match=r"--size 128: above the store's 64 px.*--upsample"):
        training_size(TrainConfig(size=128), 64)
    assert training_size(TrainConfig(size=128, upsample=True), 64) == 128
    assert "size" not in TRAIN_PRESETS["small"]  # a preset never upsamples a store silently
    config, net = tiny(size=None, stage="1", steps=1)
    train(store, tmp_path / "run", config, net, progress=False)
    record = json.loads((tmp_path / "run" / ckpt.CONFIG_FILE).read_text())
    assert record["data"]["size"] == 64 and record["train"]["size"] is None


def test_resume_configs_take_the_run_s_own(store: str, tmp_path: Path) -> None:
    config, net = tiny(stage="1", steps=2, lr=3e-3)
    train(store, tmp_path / "run", config, net, progress=False)
    again, again_net = resume_configs(tmp_path / "run")
    assert (again, again_net) == (config, net)
    changed, _ = resume_configs(tmp_path / "run", {"loc_width": 8}, steps=5, stage="2")
    assert (changed.steps, changed.stage, changed.lr) == (5, "2", 3e-3)
    assert resume_configs(tmp_path / "run", {"loc_width": 8})[1].loc_width == 8
    assert resume_configs(tmp_path / "nothing") == make_configs("default")
    with pytest.raises(ConfigError, match="not both"):
        resume_configs(tmp_path / "run", steps=1, epochs=1)


def test_resource_notes() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    default, default_net = make_configs("default", workers=2)
    (note,) = resource_notes(default, default_net, cpu, cpus=2)
    assert "sized for a GPU" in note and "--preset small" in note
    assert resource_notes(default, default_net, cuda, cpus=2) == []
    small, small_net = make_configs("small", workers=1)
    assert small_net == PRESETS["small"]
    assert resource_notes(small, small_net, cpu, cpus=2) == []
    (note,) = resource_notes(small, small_net, cpu, cpus=2) + resource_notes(
        make_configs("small", workers=3)[0], small_net, cpu, cpus=2
    )
    assert "--workers 3" in note and "2 CPU(s)" in note


@pytest.mark.slow
def test_too_many_workers_noted_once_not_warned(store, tmp_path, monkeypatch, recwarn) -> None:
    """More DataLoader processes than CPUs: one note, none of torch's warnings (one per loader
    and iterator otherwise)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    config, net = tiny(stage="all", steps=1, workers=2, val_fraction=0.34, val_interval=1)
    result = train(store, tmp_path / "run", config, net, progress=False)
    assert [n for n in result.notes if "--workers 2" in n] == [result.notes[-1]]
    assert not [w for w in recwarn if "DataLoader will create" in str(w.message)]
