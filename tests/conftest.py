"Fixtures shared by several test files."
import pytest
import torch

from rewardsae.models import load_causal_lm


@pytest.fixture(scope="session")
def tuned_tiny(tmp_path_factory):
    "tiny-neox with known perturbations: layer 3 moved most, then layer 1, layers 0 and 2 untouched."
    model, tok = load_causal_lm("tiny-neox")
    with torch.no_grad():
        model.gpt_neox.layers[3].mlp.dense_h_to_4h.weight[0, 0] += 5.0
        model.gpt_neox.layers[1].attention.dense.weight[0, 0] += 2.0
    path = tmp_path_factory.mktemp("tuned") / "tiny-tuned"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
