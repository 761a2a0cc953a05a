"""Tests of resynth_models.checkpoint: atomic writes, safetensors/JSON round trips (no pickle),
resumable training states, and load_detector with its errors."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from anomalygen.config import to_dict  # noqa: E402
from anomalygen.errors import StoreError  # noqa: E402
from resynth_models import checkpoint as ckpt  # noqa: E402
from resynth_models.networks import NetworkConfig, ReconstructionNet, ReSynthDetect  # noqa: E402

TINY = NetworkConfig(rec_width=4, rec_depth=3, loc_width=4, loc_depth=3)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def read_safetensors_header(path: Path) -> dict:
    """Parse a safetensors file by hand: 8-byte little-endian header length, JSON header, then
    exactly the raw bytes the header describes. Anything else (a pickle, a zip) fails here."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    assert 8 + n + end == len(data)
    return header


def assert_no_pickle(path: Path) -> None:
    head = path.read_bytes()[:4]
    assert not head.startswith(b"\x80")  # pickle protocol 2+ opcode
    assert not head.startswith(b"PK")  # torch.save's zip container


# ---------------------------------------------------------------------------------------------
# Files


def test_atomic_write_replaces_or_keeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "sub" / "f.json"
    ckpt.write_json(target, {"a": 1})
    ckpt.write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}

    def crash(src, dst):  # the process dies before the rename
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        ckpt.write_json(target, {"a": 3})
    assert json.loads(target.read_text()) == {"a": 2}  # the last good file is intact
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]  # no temporary left


def test_write_json_refuses_nan(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ckpt.write_json(tmp_path / "x.json", {"loss": float("nan")})


def test_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = ReSynthDetect(TINY)
    path = tmp_path / "w.safetensors"
    ckpt.save_weights(path, net.state_dict(), stage=2, network=TINY)
    header = read_safetensors_header(path)
    assert_no_pickle(path)
    assert header["__metadata__"]["stage"] == "2"
    assert json.loads(header["__metadata__"]["network"]) == to_dict(TINY)
    tensors, meta = ckpt.load_weights(path)
    assert meta["format"] == "resynth-weights"
    torch.manual_seed(1)
    other = ReSynthDetect(TINY)
    ckpt.load_module_weights(other, tensors, str(path))
    for (k, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_weights(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ckpt.CheckpointError, match="not a valid safetensors"):
        ckpt.load_weights(bad)
    net = ReconstructionNet(4, 3)
    path = tmp_path / "w.safetensors"
    ckpt.save_weights(path, net.state_dict(), stage=1, network=TINY)
    tensors, _ = ckpt.load_weights(path)
    with pytest.raises(ckpt.CheckpointError, match="do not fit the network"):
        ckpt.load_module_weights(ReconstructionNet(8, 3), tensors, str(path))


# ---------------------------------------------------------------------------------------------
# Training state


def _trained(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    net = ReconstructionNet(4, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.rand(2, 3, 16, 16)
    for _ in range(2):
        opt.zero_grad()
        ((net(x) - x) ** 2).mean().backward()
        opt.step()
    return net, opt


def test_state_round_trip_restores_everything(tmp_path: Path) -> None:
    net, opt = _trained()
    torch.manual_seed(123)
    np.random.seed(7)  # noqa: NPY002 (the legacy global state is what is saved)
    random.seed(9)
    ckpt.save_state(tmp_path, 1, model=net, optimizer=opt, step=2, info={"total_steps": 10})
    expect = (torch.rand(3), np.random.rand(2), random.random())  # noqa: NPY002

    fresh, fresh_opt = _trained(seed=5)  # other weights, other moments
    torch.manual_seed(0)
    record = ckpt.load_state(tmp_path, 1, model=fresh, optimizer=fresh_opt)
    assert record["step"] == 2 and record["info"] == {"total_steps": 10}
    for a, b in zip(net.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    sa, sb = opt.state_dict(), fresh_opt.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for pid in sa["state"]:
        for key, value in sa["state"][pid].items():
            assert torch.equal(value, sb["state"][pid][key])
    got = (torch.rand(3), np.random.rand(2), random.random())  # noqa: NPY002
    assert torch.equal(expect[0], got[0])
    np.testing.assert_array_equal(expect[1], got[1])
    assert expect[2] == got[2]

    folder = tmp_path / "state"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["stage1-000000002.safetensors", "stage1.json"]
    read_safetensors_header(folder / files[0])
    assert_no_pickle(folder / files[0])
    json.loads((folder / "stage1.json").read_text())


def test_state_save_crash_keeps_the_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net, opt = _trained()
    ckpt.save_state(tmp_path, 1, model=net, optimizer=opt, step=2, info={})
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)

    def crash(path, obj):  # dies after the new tensors file, before the JSON commit
        raise OSError("killed")

    monkeypatch.setattr(ckpt, "write_json", crash)
    with pytest.raises(OSError):
        ckpt.save_state(tmp_path, 1, model=net, optimizer=opt, step=4, info={})
    monkeypatch.undo()
    fresh, fresh_opt = _trained(seed=3)
    record = ckpt.load_state(tmp_path, 1, model=fresh, optimizer=fresh_opt)
    assert record["step"] == 2
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, before[k])
    # the next successful save cleans the orphan up
    ckpt.save_state(tmp_path, 1, model=net, optimizer=opt, step=6, info={})
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        "stage1-000000006.safetensors",
        "stage1.json",
    ]


def test_load_state_errors(tmp_path: Path) -> None:
    net, opt = _trained()
    with pytest.raises(ckpt.CheckpointError, match="no saved stage-1"):
        ckpt.load_state(tmp_path, 1, model=net, optimizer=opt)
    ckpt.save_state(tmp_path, 1, model=net, optimizer=opt, step=1, info={})
    record = json.loads((tmp_path / "state" / "stage1.json").read_text())
    record["format_version"] = 99
    (tmp_path / "state" / "stage1.json").write_text(json.dumps(record))
    with pytest.raises(ckpt.CheckpointError, match="version 99"):
        ckpt.load_state(tmp_path, 1, model=net, optimizer=opt)


# ---------------------------------------------------------------------------------------------
# load_detector


def make_run(tmp_path: Path, stages=(1, 2), size: int = 32, network=TINY) -> Path:
    run = tmp_path / "run"
    run.mkdir(parents=True)
    config = {
        "format": ckpt.RUN_FORMAT,
        "format_version": ckpt.RUN_FORMAT_VERSION,
        "network": to_dict(network),
        "train": {},
        "data": {"size": size, "clahe": False},
    }
    ckpt.write_json(run / ckpt.CONFIG_FILE, config)
    torch.manual_seed(0)
    model = ReSynthDetect(network)
    if 1 in stages:
        ckpt.save_weights(
            run / "stage1.safetensors", model.rec_net.state_dict(), stage=1, network=network
        )
    if 2 in stages:
        ckpt.save_weights(run / "stage2.safetensors", model.state_dict(), stage=2, network=network)
    return run


def test_load_detector_localization(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    det = ckpt.load_detector(run)
    assert det.scoring == "localization" and det.size == 32 and det.clahe is False
    assert isinstance(det.model, ReSynthDetect) and not det.model.training
    x = torch.rand(2, 3, 32, 32)
    maps = det.anomaly_map(x)
    assert maps.shape == (2, 32, 32) and maps.dtype == torch.float32
    assert 0 <= maps.min() and maps.max() <= 1
    torch.testing.assert_close(maps, torch.sigmoid(det.model(x))[:, 0])
    other = det.anomaly_map(torch.rand(1, 3, 48, 40))  # resized in and out
    assert other.shape == (1, 48, 40)
    assert det.anomaly_map((x * 255).to(torch.uint8)).shape == (2, 32, 32)


def test_load_detector_reconstruction(tmp_path: Path) -> None:
    run = make_run(tmp_path, stages=(1,))
    with pytest.raises(ckpt.CheckpointError, match="scoring 'reconstruction'"):
        ckpt.load_detector(run)
    det = ckpt.load_detector(run, scoring="reconstruction")
    assert det.scoring == "reconstruction" and isinstance(det.model, ReconstructionNet)
    x = torch.rand(2, 3, 32, 32)
    maps = det.anomaly_map(x)
    assert maps.shape == (2, 32, 32) and 0 <= maps.min() and maps.max() <= 1
    torch.testing.assert_close(maps, ((det.model(x) - x) ** 2).mean(dim=1))


def test_load_detector_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no run folder"):
        ckpt.load_detector(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ckpt.CheckpointError, match="run config"):
        ckpt.load_detector(empty)
    run = make_run(tmp_path, stages=())
    with pytest.raises(ckpt.CheckpointError, match="stage 2 has not started"):
        ckpt.load_detector(run)
    config = json.loads((run / "config.json").read_text())
    config["format_version"] = 7
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ckpt.CheckpointError, match="version 7 is not known"):
        ckpt.load_detector(run)
    (run / "config.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="cannot read"):
        ckpt.load_detector(run)
    with pytest.raises(ValueError, match="scoring"):
        ckpt.load_detector(make_run(tmp_path / "x", stages=(2,)), scoring="magic")
