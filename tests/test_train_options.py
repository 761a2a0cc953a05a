"""The table of training knobs (resynth_models.train_options): each knob is defined there
once, and the config, the presets, the run-folder rules and ``resynth train`` read it."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from anomalygen_cli.resynth_cli import main  # noqa: E402
from resynth_models.networks import PRESETS, NetworkConfig  # noqa: E402
from resynth_models.train_config import (  # noqa: E402
    OPERATIONAL_FIELDS,
    TRAIN_PRESETS,
    TrainConfig,
    make_configs,
)
from resynth_models.train_options import PRESET_NAMES, TRAIN_OPTIONS  # noqa: E402
from tests.synthetic import run_cli  # noqa: E402

#: TrainConfig fields that no option sets (AdamW's betas are torch's defaults).
NO_OPTION = {"betas"}


def test_every_field_has_one_option_and_every_option_a_field() -> None:
    train = [o.field for o in TRAIN_OPTIONS if o.config == "train"]
    network = [o.field for o in TRAIN_OPTIONS if o.config == "network"]
    assert len(train) == len(set(train)) and len(network) == len(set(network))
    assert set(train) | NO_OPTION == {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(network) <= {f.name for f in dataclasses.fields(NetworkConfig)}
    flags = [o.flag for o in TRAIN_OPTIONS]
    parameters = [o.parameter for o in TRAIN_OPTIONS]
    assert len(flags) == len(set(flags)) and len(parameters) == len(set(parameters))


def test_presets_and_operational_fields_come_from_the_table() -> None:
    assert set(PRESET_NAMES) == set(PRESETS) == set(TRAIN_PRESETS)
    for option in TRAIN_OPTIONS:
        assert set(option.presets) <= set(PRESET_NAMES), option.field
        assert option.config == "train" or not (option.presets or option.operational)
        for name, value in option.presets.items():
            expected = option.parse(value) if option.parse else value  # the option's value
            assert getattr(make_configs(name)[0], option.field) == expected
    assert TRAIN_PRESETS["small"]["val_interval"] == 500
    assert make_configs("small")[0].photometric.enabled  # written True in the table
    assert not make_configs("paper")[0].photometric.enabled
    assert "val_interval" in OPERATIONAL_FIELDS and "lr" not in OPERATIONAL_FIELDS


#: A value for every option, none of them the default preset's.
GIVEN = {
    "--stage": "1", "--size": "48", "--upsample": None, "--batch-size": "3", "--steps": "7",
    "--stage1-steps": "5", "--lr": "0.002", "--min-lr": "0.001", "--warmup": "3",
    "--weight-decay": "0.5", "--grad-clip": "2", "--focal-tau": "1.5", "--seed": "9",
    "--no-augment": None,
    "--photometric/--no-photometric": "--photometric", "--rec-features": "image",
    "--rec-width": "6", "--rec-depth": "3", "--loc-width": "10", "--loc-depth": "3",
    "--local-contrast": "0.25,0.5", "--device": "cpu", "--amp": "off",
    "--workers": "0", "--compile": None, "--val-fraction": "0.5", "--val-samples": "11",
    "--val-interval": "13", "--log-interval": "17", "--ckpt-interval": "19",
    "--test-flip/--no-test-flip": "--no-test-flip", "--threshold-fpr": "0.1",
}  # fmt: skip


def test_every_option_of_resynth_train_reaches_its_field(monkeypatch, capsys, tmp_path) -> None:
    """``resynth train`` with every knob given: each lands in its config field (a row whose
    option the command lost, or passed to another field, fails here)."""
    assert set(GIVEN) | {"--epochs", "--stage1-from"} == {o.flag for o in TRAIN_OPTIONS}
    seen = {}

    def fake_train(data, out, config, network, **kw):
        seen.update(config=config, network=network)
        raise SystemExit(0)

    monkeypatch.setattr("resynth_models.train.train", fake_train)
    args = []
    for flag, value in GIVEN.items():
        if "/" in flag:
            args.append(value)
        else:
            args += [flag] if value is None else [flag, value]
    code, _, err = run_cli(main, "resynth", monkeypatch, capsys, "train", "--data", "s.zarr",
                           "--out", tmp_path / "run", *args)  # fmt: skip
    assert code == 0, err
    config, network = seen["config"], seen["network"]
    for option in TRAIN_OPTIONS:
        if option.flag in ("--epochs", "--stage1-from"):
            continue
        value = getattr(config if option.config == "train" else network, option.field)
        default = getattr(make_configs()[option.config == "network"], option.field)
        assert value != default, option.flag
    assert config.stage1_steps == 5 and network.local_contrast == (0.25, 0.5)
    assert not config.augment.hflip and config.photometric.enabled and config.compile
    code, _, err = run_cli(main, "resynth", monkeypatch, capsys, "train", "--data", "s.zarr",
                           "--out", tmp_path / "run", "--stage", "2", "--epochs", "2.5",
                           "--stage1-from", "runs/a")  # fmt: skip
    assert code == 0, err
    assert (seen["config"].epochs, seen["config"].stage1_from) == (2.5, "runs/a")
