"""Absurd sizes and widths are refused in one line before anything is created or allocated.

Before: ``--size 100000`` created the store, then failed allocating 224 GiB with a hint to rerun
that could not succeed (and the leftover store refused a rerun at another size); widths or a
size in a run's config.json gave ``internal error: RuntimeError ... allocate ... bytes`` in
evaluate and a multi-line OpenCV error in predict.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from anomalygen.errors import ConfigError
from anomalygen.fundus import MAX_SIDE, prepare_fundus
from anomalygen.render import render
from anomalygen.render.tasks import check_memory, worker_bytes
from anomalygen.store.format import MAX_SIZE
from anomalygen_cli.anomalygen_cli import main as anomalygen_main
from tests.synthetic import make_fundus, run_cli, write_sources

GB = 10**9  # as format_bytes counts


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return write_sources(tmp_path_factory.mktemp("src") / "normals", count=2)


def test_a_huge_size_is_refused_before_the_store_exists(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "huge.zarr"
    with pytest.raises(ConfigError) as err:
        render(out, src, 8, size=100_000, progress=False)
    assert str(err.value) == "--size: must be at most 4,096, got 100,000"
    assert not out.exists()
    # The same store renders at a sane size afterwards: nothing was left behind.
    render(out, src, 4, size=32, shard_size=4, workers=1, progress=False)


def test_the_cli_says_it_in_one_line(src: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "cli.zarr"
    code, _, err = run_cli(
        anomalygen_main, "anomalygen", monkeypatch, capsys,
        "render", "--src", src, "--n", "8", "--size", "100000", "--out", out, "--quiet",
    )  # fmt: skip
    assert code == 1 and err.strip() == "error: --size: must be at most 4,096, got 100,000"
    assert not out.exists()


def test_memory_for_one_shard_is_checked_before_anything_is_created(
    src: Path, tmp_path: Path, monkeypatch
) -> None:
    assert worker_bytes(768, 64) < GB  # the default render: about 0.3 GB of shard buffers
    with pytest.raises(ConfigError) as err:
        check_memory(4096, 4096, 1, 16 * GB)
    assert str(err.value) == (
        "--size 4096 with --shard-size 4096: a worker needs about 550.4 GB to hold one shard, "
        "and this machine has 16.0 GB of memory; lower --size or --shard-size"
    )
    with pytest.raises(ConfigError, match=r"--workers 16: .* use --workers 4 or"):
        check_memory(4096, 64, 16, 45 * GB)
    check_memory(768, 64, 16, 16 * GB)  # fits
    check_memory(4096, 4096, 1, None)  # unknown memory: no check

    monkeypatch.setattr("anomalygen.render.coordinator.physical_memory", lambda: 1 * GB)
    out = tmp_path / "big.zarr"
    with pytest.raises(ConfigError, match=r"this machine has 1\.0 GB"):
        render(out, src, 8, size=2048, shard_size=64, workers=1, progress=False)
    assert not out.exists()


def test_prepare_fundus_refuses_an_absurd_size() -> None:
    assert MAX_SIDE == MAX_SIZE
    with pytest.raises(ConfigError, match="size: must be an integer from 8 to 4096 pixels"):
        prepare_fundus(make_fundus(64), size=1_000_000)


# ------------------------------------------------------------------------------------------
# A run's config.json
# ------------------------------------------------------------------------------------------


def _edit_config(run: Path, **changes) -> None:
    path = run / "config.json"
    config = json.loads(path.read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config[section][key] = value
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"network__loc_width": 10**8}, "NetworkConfig.loc_width: must be at most 256"),
        ({"data__size": 10**6}, "training size data.size 1000000 is not an integer from 8"),
        ({"data__size": -3}, "training size data.size -3 is not an integer from 8"),
    ],
)
def test_absurd_run_configs_are_refused_in_one_line(
    tmp_path: Path, capsys, monkeypatch, change, expected
) -> None:
    pytest.importorskip("torch")
    from resynth_models.checkpoint import load_detector
    from tests.test_evaluate import make_run
    from tests.test_evaluate import run_cli as resynth

    run = make_run(tmp_path / "run")
    _edit_config(run, **change)
    with pytest.raises(Exception) as err:
        load_detector(run)
    assert expected in str(err.value) and "\n" not in str(err.value)
    photo = tmp_path / "photo.png"
    Image.fromarray(make_fundus(80)).save(photo)
    code, _, stderr = resynth(
        ["predict", photo, "--checkpoint", run, "--out", tmp_path / "out", "-q"], capsys,
        monkeypatch,
    )  # fmt: skip
    assert code == 1 and expected in stderr
    assert len(stderr.strip().splitlines()) == 1 and "internal error" not in stderr


def test_train_refuses_an_absurd_size_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from resynth_models.train import make_configs, train
    from tests.synthetic import render_tiny_store

    store = render_tiny_store(tmp_path, 8)
    config, network = make_configs(
        "small", size=100_352, upsample=True, steps=1, workers=0, device="cpu"
    )
    with pytest.raises(ConfigError) as err:
        train(store, tmp_path / "run", config, network)
    assert "larger than 4096 px" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()
