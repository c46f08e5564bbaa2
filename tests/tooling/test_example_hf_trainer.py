"""examples/hf_trainer.py runs (few steps): the Trainer trains with fastopt.torch.AdamW and the loss falls."""
import importlib.util
import pathlib

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "hf_trainer.py"


def test_hf_trainer_example_trains_with_fastopt(tmp_path, capsys):
    if not EXAMPLE.exists():
        pytest.skip(f"{EXAMPLE} not found (examples are not part of the installed package)")
    spec = importlib.util.spec_from_file_location("fastopt_example_hf_trainer", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    history = example.main(steps=20, output_dir=str(tmp_path), log_every=5)
    out = capsys.readouterr().out
    assert "optimizer: fastopt.torch.AdamW" in out
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 4 and out.count("loss ") == 4
    assert losses[-1] < 0.8 * losses[0], losses        # the counting sequences are being learnt
