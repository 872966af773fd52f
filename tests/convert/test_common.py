import pytest
import torch
from safetensors.torch import save_file

from geomim_hf.convert.common import UnsafeCheckpointError, load_state_dict, resize_relative_position_bias_table
from tests.helpers import RunsCode



def test_a_checkpoint_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hook": RunsCode(str(marker))}, tmp_path / "bad.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"bad\.pth.*weights_only=True"):
        load_state_dict(str(tmp_path / "bad.pth"))
    assert not marker.exists()


def test_state_dict_found_in_trainer_checkpoints_and_safetensors(tmp_path):
    weights = {"a.weight": torch.randn(3, 2), "b": torch.arange(4)}
    torch.save({"meta": {"epoch": 3}, "state_dict": weights}, tmp_path / "mm.pth")
    torch.save({"model": weights, "optimizer": {}}, tmp_path / "deit.pth")
    save_file(weights, str(tmp_path / "w.safetensors"))
    for name in ("mm.pth", "deit.pth", "w.safetensors"):
        loaded = load_state_dict(str(tmp_path / name))
        assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)
    with pytest.raises(KeyError, match="'ema'"):
        load_state_dict(str(tmp_path / "mm.pth"), key="ema")
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_state_dict(str(tmp_path / "nothere.pth"))


def test_bias_table_resize():
    table = torch.randn(13 * 13, 4)
    assert resize_relative_position_bias_table(table, (7, 7)) is table  # same window: untouched
    constant = torch.full((13 * 13, 2), 0.5)
    resized = resize_relative_position_bias_table(constant, (16, 16))
    assert resized.shape == (31 * 31, 2)
    torch.testing.assert_close(resized, torch.full_like(resized, 0.5))  # bicubic keeps a constant
    # The centre offset (0, 0) stays the centre: row (2w-1)*(w-1) + (w-1).
    peaked = torch.zeros(13 * 13, 1)
    peaked[13 * 6 + 6] = 1.0
    resized = resize_relative_position_bias_table(peaked, (16, 16))
    assert resized.argmax().item() == 31 * 15 + 15
