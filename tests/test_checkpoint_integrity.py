"""Damaged checkpoints are refused with one line (issue 10, item 3).

Before: flipping 64 bytes inside ``stage2.safetensors`` changed 16 weights from about 0.02 to
about 200, and ``evaluate`` / ``predict`` exited 0 with a slightly different score.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from resynth_models import checkpoint as ckpt  # noqa: E402
from resynth_models.networks import NetworkConfig, ReconstructionNet  # noqa: E402
from tests.synthetic import make_fundus  # noqa: E402
from tests.test_evaluate import make_run  # noqa: E402
from tests.test_evaluate import run_cli as resynth  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = NetworkConfig(rec_width=4, rec_depth=3, loc_width=4, loc_depth=3)


def data_start(path: Path) -> int:
    data = path.read_bytes()
    return 8 + int.from_bytes(data[:8], "little")


def flip(path: Path, at: int, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    for k in range(at, at + count):
        data[k] ^= 0x40  # in float32 exponents, 0.02 becomes ~1e17 or ~1e-21
    path.write_bytes(bytes(data))


def test_every_weights_file_carries_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    model = ReconstructionNet(4, 3)
    ckpt.save_weights(path, model.state_dict(), stage=1, network=TINY)
    data = path.read_bytes()
    header = json.loads(data[8 : data_start(path)])
    assert len(header["__metadata__"][ckpt.DIGEST_KEY]) == 64
    tensors, _ = ckpt.load_weights(path)
    for name, value in model.state_dict().items():
        assert torch.equal(tensors[name], value)


def test_flipped_bytes_in_the_weights_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    ckpt.save_weights(path, ReconstructionNet(4, 3).state_dict(), stage=1, network=TINY)
    flip(path, data_start(path) + 256)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_weights(path)
    message = str(err.value)
    assert message.startswith(f"{path}: the weights file is damaged: its content does not match")
    assert message.endswith("restore it from a copy or train again") and "\n" not in message


def test_an_edited_header_is_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    path = ckpt.stage_weights_path(run, 2)
    ckpt.load_weights(path)
    data = path.read_bytes()
    assert b'"network"' in data
    edited = data.replace(b'"stage":"2"', b'"stage":"1"')  # same length: offsets unchanged
    assert edited != data
    path.write_bytes(edited)
    with pytest.raises(ckpt.CheckpointError, match="is damaged"):
        ckpt.load_weights(path)


def test_older_files_without_a_digest_still_load(tmp_path: Path) -> None:
    from safetensors.torch import save

    path = tmp_path / "old.safetensors"
    state = ReconstructionNet(4, 3).state_dict()
    meta = {"format": "resynth-weights", "format_version": "1", "stage": "1", "network": "{}"}
    path.write_bytes(save({k: v.contiguous() for k, v in state.items()}, metadata=meta))
    tensors, metadata = ckpt.load_weights(path)
    assert ckpt.DIGEST_KEY not in metadata and set(tensors) == set(state)


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_evaluate_and_predict_refuse_a_damaged_run(
    tmp_path: Path, capsys, monkeypatch, command: str
) -> None:
    run = make_run(tmp_path / "run")
    weights = ckpt.stage_weights_path(run, 2)
    flip(weights, data_start(weights) + 128)
    photos = tmp_path / "photos"
    for kind in ("normal", "abnormal"):  # the "folder" layout of evaluate
        (photos / kind).mkdir(parents=True)
        Image.fromarray(make_fundus(80)).save(photos / kind / "a.png")
    if command == "predict":
        args = ["predict", photos, "--checkpoint", run, "--out", tmp_path / "out", "-q"]
    else:
        args = ["evaluate", "--checkpoint", run, "--dataset", "folder", "--root", photos,
                "--out", tmp_path / "eval", "-q"]  # fmt: skip
    code, _, err = resynth(args, capsys, monkeypatch)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith(
        f"error: {weights}: the weights file is damaged: its content does not match the sha256 "
        "written into it ("
    )
    assert lines[0].endswith("); restore it from a copy or train again")


def _state(tmp_path: Path) -> tuple[Path, torch.nn.Module, torch.optim.Optimizer]:
    model = ReconstructionNet(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(1, 3, 16, 16)).sum().backward()
    optimizer.step()
    record = ckpt.save_state(tmp_path, 1, model=model, optimizer=optimizer, step=5, info={})
    return record, model, optimizer


def test_a_damaged_training_state_is_refused(tmp_path: Path) -> None:
    record_path, model, optimizer = _state(tmp_path)
    record = json.loads(record_path.read_text())
    assert len(record["tensors_sha256"]) == 64
    tensors = record_path.parent / record["tensors"]
    flip(tensors, data_start(tensors) + 64, count=8)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_state(tmp_path, 1, model=model, optimizer=optimizer)
    assert "is not the file its record names" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_state_file_swapped_for_another_is_refused(tmp_path: Path) -> None:
    """Both files are intact, but the record names another one's content."""
    record_path, model, optimizer = _state(tmp_path)
    record = json.loads(record_path.read_text())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    other = ckpt.save_state(tmp_path / "b", 1, model=model, optimizer=optimizer, step=5, info={})
    other_tensors = other.parent / json.loads(other.read_text())["tensors"]
    (record_path.parent / record["tensors"]).write_bytes(other_tensors.read_bytes())
    with pytest.raises(ckpt.CheckpointError, match="not the file its record names"):
        ckpt.load_state(tmp_path, 1, model=model, optimizer=optimizer)
