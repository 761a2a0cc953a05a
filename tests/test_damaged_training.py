"""Training on a damaged store stops with one line saying what is damaged and how to repair it,
also when the damaged sample is read in a DataLoader worker (issue 10, item 2).

Before: ``resynth train`` on a store with a lost image object exited 0 after training on blank
images; a StoreError raised in a DataLoader worker came back with the worker's traceback in its
message ("Caught StoreError in DataLoader worker process 0. Original Traceback ...").
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from anomalygen import open_store  # noqa: E402
from anomalygen.store import shard_key  # noqa: E402
from anomalygen_cli.resynth_cli import main  # noqa: E402
from resynth_models.data import (  # noqa: E402
    DamagedData,
    NormalsDataset,
    SyntheticDataset,
    worker_context,
)
from tests.synthetic import render_tiny_store, run_cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = ["--preset", "small", "--size", "32", "--batch-size", "2", "--steps", "2",
        "--rec-width", "4", "--rec-depth", "3", "--loc-width", "4", "--loc-depth", "3",
        "--val-fraction", "0", "--device", "cpu", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_tiny_store(tmp_path_factory.mktemp("damaged"), 8, photos=3)


@pytest.fixture()
def blank(store: Path, tmp_path: Path) -> Path:
    """The store with every image object lost (a failed copy): every sample is damaged."""
    copy = tmp_path / "blank.zarr"
    shutil.copytree(store, copy)
    for shard in range(2):
        (copy / shard_key("image", shard, ndim=4)).unlink()
    return copy


def _batches(dataset, workers: int):
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=2,
        num_workers=workers,
        multiprocessing_context=worker_context() if workers else None,
    )
    return list(loader)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_damaged_sample_is_one_line_through_dataloader_workers(blank: Path, workers) -> None:
    dataset = SyntheticDataset(open_store(blank))
    with pytest.raises(DamagedData) as err:
        _batches(dataset, workers)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message and "Caught" not in message
    assert message.startswith(f"--data: {blank}: sample 0 (shard 0) is damaged: array 'image'")
    assert message.endswith(
        f"`anomalygen verify {blank} --repair` renders the damaged shards again"
    )


def test_a_damaged_normal_is_one_line_for_stage_1(store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "no_normals.zarr"
    shutil.copytree(store, copy)
    (copy / shard_key("normals", 0, ndim=4)).unlink()
    with pytest.raises(DamagedData, match=r"normals slot 0 \(pool shard 0\) is damaged"):
        _batches(NormalsDataset(open_store(copy)), workers=1)


def test_train_stops_with_one_line(blank: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    args = ["train", "--data", blank, "--out", tmp_path / "run", *TINY, "--stage", "2",
            "--rec-features", "none", "--workers", "1"]  # fmt: skip
    code, _, err = run_cli(main, "resynth", monkeypatch, capsys, *args)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"error: --data: {blank}: sample ")
    assert "is damaged: array 'image'" in lines[0] and "--repair" in lines[0]
    assert "internal error" not in err and "please report" not in err
