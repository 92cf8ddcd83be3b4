"""checkpoints.py: the series' one checkpoint format (section 5.4's save and load, made safe)."""

import pytest
import torch
from conftest import CHAR_CFG, CharTokenizer

from checkpoints import load_checkpoint, model_from_checkpoint, save_checkpoint
from plumbing import ScriptError
from s_gpt_model import GPTModel
from u_pretraining import calc_loss_batch


def trained_tiny_model():
    torch.manual_seed(5)
    model = GPTModel(CHAR_CFG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.001, weight_decay=0.1)
    inputs, targets = torch.randint(0, 96, (2, 16)), torch.randint(0, 96, (2, 16))
    for _ in range(2):
        optimizer.zero_grad()
        calc_loss_batch(inputs, targets, model, "cpu").backward()
        optimizer.step()
    return model.eval(), optimizer, inputs


def test_save_and_load_checkpoint(tmp_path):
    model, optimizer, inputs = trained_tiny_model()
    path = save_checkpoint(tmp_path / "sub" / "ckpt.pth", model, CHAR_CFG, optimizer, epoch=2,
                           note="tiny")
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pth"]  # no temporary file left
    plain = tmp_path / "plain.pth"
    torch.save({}, plain)
    assert path.stat().st_mode == plain.stat().st_mode  # as readable as any file torch.save writes

    checkpoint = load_checkpoint(path)
    assert checkpoint["config"] == CHAR_CFG
    assert checkpoint["epoch"] == 2 and checkpoint["note"] == "tiny"

    reloaded, cfg = model_from_checkpoint(path)
    assert cfg == CHAR_CFG and not reloaded.training
    with torch.no_grad():
        assert torch.equal(reloaded(inputs), model(inputs))

    new_optimizer = torch.optim.AdamW(reloaded.parameters(), lr=0.5, weight_decay=0.1)
    new_optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    assert new_optimizer.param_groups[0]["lr"] == 0.001
    old_state, new_state = optimizer.state_dict()["state"], new_optimizer.state_dict()["state"]
    assert old_state.keys() == new_state.keys()
    for key in old_state:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(old_state[key][name], new_state[key][name])

    # A model-only checkpoint has no optimizer state.
    path = save_checkpoint(tmp_path / "model.pth", model, CHAR_CFG)
    assert "optimizer_state_dict" not in load_checkpoint(path)


def test_save_checkpoint_refuses_what_cannot_be_loaded(tmp_path):
    model, _, _ = trained_tiny_model()
    with pytest.raises(ValueError, match="weights_only"):
        save_checkpoint(tmp_path / "c.pth", model, CHAR_CFG, history=[1.0, object()])
    with pytest.raises(ValueError, match="config"):
        save_checkpoint(tmp_path / "c.pth", model, CHAR_CFG, config={})
    assert not list(tmp_path.iterdir())


def test_broken_checkpoints_give_a_clear_error(tmp_path):
    model, optimizer, _ = trained_tiny_model()
    good = save_checkpoint(tmp_path / "good.pth", model, CHAR_CFG, optimizer)
    data = good.read_bytes()

    missing = tmp_path / "missing.pth"
    with pytest.raises(ScriptError, match="missing.pth"):
        load_checkpoint(missing)

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(ScriptError, match="truncated.pth.*damaged"):
        load_checkpoint(truncated)
    with pytest.raises(ScriptError, match="truncated.pth"):
        model_from_checkpoint(truncated)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ScriptError, match="garbage.pth") as error:
        load_checkpoint(garbage)
    assert "weights_only" not in str(error.value)  # never PyTorch's advice to unpickle it

    # weights_only=True: a pickled arbitrary object is refused, not executed.
    pickled = tmp_path / "pickled.pth"
    torch.save({"model_state_dict": {}, "config": CHAR_CFG, "x": CharTokenizer()}, pickled)
    with pytest.raises(ScriptError, match="pickled.pth") as error:
        load_checkpoint(pickled)
    assert "(the safe loader, which reads only tensors and plain values, refused it: Unsupported global" in \
        str(error.value)
    assert "weights_only" not in str(error.value) and "add_safe_globals" not in str(error.value)

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ScriptError, match=r"empty.pth: it is damaged, .* \(EOFError\); delete it"):
        load_checkpoint(empty)

    # Readable, but not one of ours.
    plain = tmp_path / "plain.pth"
    torch.save(model.state_dict(), plain)
    with pytest.raises(ScriptError, match="model_state_dict"):
        load_checkpoint(plain)
