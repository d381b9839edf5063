"""SAELens reads rewardsae's BatchTopK SAE folders: a BatchTopKSAE trained by rewardsae.batchtopk.train_batchtopk and
written by save_batchtopk (SAELens's `jumprelu` inference layout: cfg.json + sae_weights.safetensors) loads with
sae_lens.SAE.load_from_disk as a JumpReLUSAE whose encodings and reconstructions equal ours; and the other way round,
a BatchTopK SAE trained by SAELens and saved by its own save_inference_model loads with load_batchtopk.
Needs the bench venv (SAELens):

    .venv-bench/bin/python -m pytest bench/test_saelens_load.py
"""
from __future__ import annotations

import dataclasses
import json
import os

os.environ.setdefault("TQDM_DISABLE", "1")

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens", reason="SAELens is not installed: use the bench venv (make bench)")
from safetensors.torch import load_file  # noqa: E402
from sae_lens import SAE  # noqa: E402

from rewardsae.batchtopk import load_batchtopk, save_batchtopk, train_batchtopk  # noqa: E402

D_IN, D_SAE, K = 32, 96, 4


def data(n: int, seed: int = 0) -> torch.Tensor:
    "Sparse non-negative combinations of random directions, plus an offset and noise (so the SAE learns something)."
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(3 * D_IN, D_IN, generator=g), dim=1)
    on = (torch.rand(n, 3 * D_IN, generator=g) < 4 / (3 * D_IN)).float()
    return (on * torch.rand(n, 3 * D_IN, generator=g)) @ dirs * 3 + 0.5 + 0.05 * torch.randn(n, D_IN, generator=g)


@pytest.fixture(scope="module")
def ours():
    sae, _ = train_batchtopk(data(4096), D_SAE, k=K, lr=3e-3, epochs=1, batch_size=256, progress=False, device="cpu")
    return sae


def layout_mismatch(folder) -> list[str]:
    "What in `folder` SAELens's jumprelu classes would not take: unknown cfg.json fields, tensors missing or extra."
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    cfg = json.loads((folder / "cfg.json").read_text())
    fields = {f.name for f in dataclasses.fields(JumpReLUSAEConfig)}
    out = [f"cfg.json field {k!r} is not a JumpReLUSAEConfig field" for k in cfg if k not in fields | {"architecture"}]
    out += [f"JumpReLUSAEConfig field {f.name!r} is required but not in cfg.json" for f in dataclasses.fields(JumpReLUSAEConfig)
            if f.name not in cfg and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if cfg.get("architecture") != JumpReLUSAEConfig.architecture():
        out.append(f"architecture {cfg.get('architecture')!r} != {JumpReLUSAEConfig.architecture()!r}")
    ref = JumpReLUSAE(JumpReLUSAEConfig(d_in=cfg["d_in"], d_sae=cfg["d_sae"])).state_dict()
    w = load_file(str(folder / "sae_weights.safetensors"))
    out += [f"tensor {k!r} missing from sae_weights.safetensors" for k in ref if k not in w]
    out += [f"tensor {k!r} is not a JumpReLUSAE parameter" for k in w if k not in ref]
    out += [f"tensor {k!r}: shape {tuple(w[k].shape)} != SAELens's {tuple(ref[k].shape)}"
            for k in w if k in ref and w[k].shape != ref[k].shape]
    return out


@pytest.mark.parametrize("per_latent", [False, True], ids=["global threshold", "per-latent thresholds"])
def test_saelens_loads_our_batchtopk(ours, tmp_path, per_latent):
    sae = ours
    if per_latent:   # save_batchtopk and load_batchtopk also carry a threshold per latent
        sae = load_batchtopk(save_batchtopk(ours, tmp_path / "copy"))
        sae.threshold = ours.threshold * torch.linspace(0.5, 1.5, D_SAE)
    folder = save_batchtopk(sae, tmp_path / "sae")
    assert layout_mismatch(folder) == []
    try:
        theirs = SAE.load_from_disk(str(folder), device="cpu")
    except Exception as e:  # report the exact layout mismatch, not just SAELens's message
        pytest.fail(f"sae_lens {sae_lens.__version__} cannot load {folder}: {type(e).__name__}: {e}; "
                    f"layout mismatches: {layout_mismatch(folder)}")
    assert type(theirs).__name__ == "JumpReLUSAE"
    x = data(512, seed=1)
    with torch.no_grad():
        f_ours, f_theirs = sae.encode(x), theirs.encode(x)
        assert f_theirs.shape == f_ours.shape == (512, D_SAE)
        assert 0 < (f_ours > 0).float().sum(1).mean() < D_SAE   # the codes are sparse, and not all zero
        torch.testing.assert_close(f_theirs, f_ours, atol=1e-5, rtol=0)
        assert torch.equal(f_theirs > 0, f_ours > 0)
        torch.testing.assert_close(theirs.decode(f_theirs), sae.decode(f_ours), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs(x), sae(x)[0], atol=1e-5, rtol=1e-5)


def test_we_load_saelens_batchtopk(tmp_path):
    "The other way round: a BatchTopK SAE trained by SAELens, saved by its save_inference_model (jumprelu)."
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer
    x = data(2048)

    def batches():
        while True:
            yield from x.split(256)

    torch.manual_seed(0)
    sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, device="cpu",
                                                          normalize_activations="expected_average_only_in"))
    SAETrainer(SAETrainerConfig(total_training_samples=16 * 256, train_batch_size_samples=256, lr=3e-3, lr_end=3e-3,
                                device="cpu", n_batches_for_norm_estimate=8, logger=LoggingConfig(log_to_wandb=False)),
               sae, batches()).fit()
    sae.save_inference_model(str(tmp_path / "sl"))
    theirs = SAE.load_from_disk(str(tmp_path / "sl"), device="cpu")
    ours = load_batchtopk(tmp_path / "sl")
    xe = data(512, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(xe), theirs.encode(xe), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(xe)[0], theirs(xe), atol=1e-5, rtol=1e-5)
