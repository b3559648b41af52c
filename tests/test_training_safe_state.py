"""Training state as JSON + safetensors (`transformers_valor.training.safe_state`): exact round trips, no pickle."""

import math
import random

import numpy as np
import pytest
import torch

from transformers_valor.training.safe_state import (
    StateFileError,
    check_like,
    load_state_tree,
    save_state_tree,
    state_files,
)


def adamw_after_one_step() -> torch.optim.AdamW:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return optimizer


def test_round_trip_is_exact(tmp_path):
    optimizer = adamw_after_one_step()
    tree = {
        "optimizer": optimizer.state_dict(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "floats": [float("nan"), float("inf"), 0.1 + 0.2],
        "bf16": torch.randn(3, dtype=torch.bfloat16),
    }
    files = save_state_tree(tree, tmp_path / "state")
    assert [p.name for p in files] == ["state.json", "state.safetensors"]
    back = load_state_tree(tmp_path / "state")
    assert back["python"] == tree["python"] and back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.98)
    assert back["numpy"][0] == "MT19937" and back["numpy"][1].dtype == np.uint32
    assert np.array_equal(back["numpy"][1], tree["numpy"][1]) and back["numpy"][2:] == tree["numpy"][2:]
    assert torch.equal(back["torch"], tree["torch"]) and torch.equal(back["bf16"], tree["bf16"])
    assert math.isnan(back["floats"][0]) and back["floats"][1:] == [float("inf"), 0.1 + 0.2]
    for index, state in optimizer.state_dict()["state"].items():  # int keys survive JSON
        for name, value in state.items():
            assert torch.equal(back["optimizer"]["state"][index][name], value)
    check_like(back["optimizer"], optimizer.state_dict(), "optimizer")
    np.random.set_state(back["numpy"])  # accepted by the libraries as they are
    random.setstate(back["python"])


def test_plain_data_needs_no_tensor_file(tmp_path):
    assert [p.name for p in save_state_tree({"step": 3}, tmp_path / "progress")] == ["progress.json"]
    assert load_state_tree(tmp_path / "progress") == {"step": 3}


def test_objects_are_refused_at_save_time(tmp_path):
    with pytest.raises(TypeError, match=r"`state\.a\.0`"):
        save_state_tree({"a": [object()]}, tmp_path / "x")


def test_damaged_files_are_named(tmp_path):
    json_file, tensor_file = state_files(tmp_path / "s")
    with pytest.raises(StateFileError, match="Missing state file"):
        load_state_tree(tmp_path / "s")
    torch.save({"a": 1}, json_file)  # a pickle where JSON should be
    with pytest.raises(StateFileError, match=r"s\.json is not a valid state file"):
        load_state_tree(tmp_path / "s")
    save_state_tree({"t": torch.ones(2)}, tmp_path / "s")
    tensor_file.write_bytes(b"garbage")
    with pytest.raises(StateFileError, match=r"s\.safetensors cannot be read"):
        load_state_tree(tmp_path / "s")
    json_file.write_text('{"state": {"__ndarray__": "x", "dtype": "|O", "shape": [1]}, "tensors": false}')
    with pytest.raises(StateFileError, match="damaged"):
        load_state_tree(tmp_path / "s")


def test_check_like_names_the_difference():
    reference = {"step": 1, "lr": 0.5, "groups": [{"betas": (0.9, 0.98)}], "t": torch.zeros(2)}
    check_like({"step": 2, "lr": 1, "groups": [{"betas": (0.8, 0.9)}], "t": torch.ones(2)}, reference, "s")
    with pytest.raises(StateFileError, match=r"s\.step: expected a int"):
        check_like({**reference, "step": "ten"}, reference, "s")
    with pytest.raises(StateFileError, match=r"s: expected keys"):
        check_like({"step": 1}, reference, "s")
    with pytest.raises(StateFileError, match=r"s\.groups\.0\.betas: expected a tuple of 2"):
        check_like({**reference, "groups": [{"betas": (0.9,)}]}, reference, "s")
    with pytest.raises(StateFileError, match=r"s\.t: expected a torch.float32 tensor of shape \(2,\)"):
        check_like({**reference, "t": torch.zeros(3)}, reference, "s")
