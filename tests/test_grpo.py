"Tests of our GRPO step (rewardsae.grpo): the sampler, the mask, the loss against TRL's on the same batch, resume, precision."
import json
from dataclasses import replace

import pandas as pd
import pytest
import torch

from rewardsae.grpo import (LlamaDecoder, _TokenLogProb, _linear, _packed, completion_mask, decodes_lean, group_advantages, grpo_loss,
                            keep_freed_memory,
                            latest_checkpoint, positions, sample_completions, sample_tokens, token_logps, train_grpo)
from rewardsae.models import load_causal_lm
from rewardsae.rlhf import make_prompts, preset, train_policy


def e_count(texts):
    "A toy reward with a spread even on a random model's gibberish: the number of letters 'e'."
    return [float(t.count("e")) for t in texts]


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-neox", device="cpu")


def _tiny_llama(vocab_size: int = 300, scale: float = 4.0):
    "A random 2-layer Llama (grouped-query attention, tied head), seeded, in fp32; weights × `scale` for sharper logits."
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=10000.0,
                      pad_token_id=0, eos_token_id=1)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():   # sharper distributions than the default init's, so that a wrong step shows in the logits
        for p in model.parameters():
            p.mul_(scale) if p.dim() > 1 else None
    return model


@pytest.fixture(scope="module")
def tiny_llama():
    return _tiny_llama()


def _model(name: str):
    "`(model, tokenizer)`: tiny-neox, or a tiny Llama (which samples and scores through LlamaDecoder) with its tokenizer."
    model, tok = load_causal_lm("tiny-neox", device="cpu")
    return (model if name == "tiny-neox" else _tiny_llama(len(tok), scale=1.0)), tok


def _decoder_logits(model, ids, mask, new, dtype=None):
    "`LlamaDecoder`'s next-token logits after the prompt, then after each column of `new` (B × (1 + steps) × V)."
    ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        dec = LlamaDecoder(model).load(ids.shape[0], ids.shape[1] + new.shape[1])
        pos = positions(mask)
        out = [dec.forward(ids, pos, mask)] + [dec.forward(new[:, j:j + 1], pos[:, -1:] + 1 + j) for j in range(new.shape[1])]
        return torch.cat(out, 1).float()


def _prompts(B=6, P=7, new=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 300, (B, P), generator=g)
    mask = torch.ones(B, P, dtype=torch.long)
    for r in range(B):
        mask[r, :r % 4] = 0                                     # left padding of 0-3 tokens
    return ids, mask, torch.randint(2, 300, (B, new), generator=g)


def test_lean_decoder_equals_the_model_in_fp32(tiny_llama):
    "After a left-padded prompt, then token by token, the decoder's logits are the full forward pass's (fp32)."
    ids, mask, new = _prompts()
    full_ids, full_mask = torch.cat([ids, new], 1), torch.cat([mask, torch.ones_like(new)], 1)
    with torch.no_grad():
        want = tiny_llama(input_ids=full_ids, attention_mask=full_mask, position_ids=positions(full_mask)).logits
    got = _decoder_logits(tiny_llama, ids, mask, new)
    assert decodes_lean(tiny_llama)
    assert want.abs().max() > 1                                  # logits of a size where a wrong step would show
    assert (got - want[:, -new.shape[1] - 1:]).abs().max() < 1e-4


def test_lean_decoder_in_bf16_is_as_close_to_fp32_as_autocast(tiny_llama):
    "In bf16 the decoder's distributions are as close to the fp32 model's as the model's own under autocast."
    ids, mask, new = _prompts()
    full_ids, full_mask = torch.cat([ids, new], 1), torch.cat([mask, torch.ones_like(new)], 1)
    kw = dict(input_ids=full_ids, attention_mask=full_mask, position_ids=positions(full_mask))
    with torch.no_grad():
        fp32 = tiny_llama(**kw).logits[:, -new.shape[1] - 1:].log_softmax(-1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = tiny_llama(**kw).logits[:, -new.shape[1] - 1:].float().log_softmax(-1)
    lean = _decoder_logits(tiny_llama, ids, mask, new, torch.bfloat16).log_softmax(-1)
    kl = lambda q: float((fp32.exp() * (fp32 - q)).sum(-1).mean())
    assert kl(lean) < 2 * kl(auto) + 1e-5, (kl(lean), kl(auto))


def test_log_probabilities_through_the_decoder_equal_the_models(tiny_llama):
    "The reference's log-probabilities through a `LlamaDecoder` (loaded once, then reused) are the model's (fp32)."
    ids, mask, new = _prompts()
    ids, mask = torch.cat([ids, new], 1), torch.cat([mask, torch.ones_like(new)], 1)
    with torch.no_grad():
        want = token_logps(tiny_llama, ids, mask, 5, entropy=False)[0]
        dec = LlamaDecoder(tiny_llama).load(ids.shape[0], 1)
        got = [token_logps(dec, ids, mask, 5, entropy=False)[0] for _ in range(2)]
    assert want.abs().max() > 1 and all((g - want).abs().max() < 1e-4 for g in got)


def test_packed_bf16_weights_give_the_same_products():
    "oneDNN's blocked layout changes how the weight is read, not the bf16 product: bit-identical to x @ w.T."
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(16, 64, generator=g).bfloat16(), torch.randn(96, 64, generator=g).bfloat16()
    assert torch.equal(_linear(x, _packed(w, 16)), x @ w.T)


def test_lean_sampling_draws_the_tokens_of_the_model_path(tiny_llama, tiny):
    "With the same generator, sampling through the decoder gives the tokens sampling through the model does (fp32)."
    ids, mask, _ = _prompts(B=8, seed=3)
    kw = dict(max_new_tokens=12, min_new_tokens=3, eos_token_id=1, pad_token_id=0)
    a, am = sample_completions(tiny_llama, ids, mask, generator=torch.Generator().manual_seed(5), lean=False, **kw)
    b, bm = sample_completions(tiny_llama, ids, mask, generator=torch.Generator().manual_seed(5), lean=True, **kw)
    assert torch.equal(a, b) and torch.equal(am, bm) and a.shape[1] > 3
    assert not decodes_lean(tiny[0])                              # GPT-NeoX decodes through transformers


def test_token_log_prob_and_its_gradient_equal_log_softmax():
    "The chunked log-probability and its hand-written backward equal log_softmax with autograd, chunk edges included."
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 13, 50, generator=g)).requires_grad_()   # 39 rows: chunks of 8 end mid-way
    targets, weights = torch.randint(0, 50, (3, 13), generator=g), torch.randn(3, 13, generator=g)
    logp, ent = _TokenLogProb.apply(logits, targets, True, 8)
    (grad,) = torch.autograd.grad((logp * weights).sum(), logits)
    ref_lsm = logits.log_softmax(-1)
    ref = ref_lsm.gather(-1, targets[..., None]).squeeze(-1)
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), logits)
    assert (logp - ref).abs().max() < 1e-5 and (grad - ref_grad).abs().max() < 1e-6
    assert (ent - -(ref_lsm.exp() * ref_lsm).sum(-1)).abs().max() < 1e-5 and not ent.requires_grad   # logged only
    (bgrad,) = torch.autograd.grad((_TokenLogProb.apply(logits.bfloat16(), targets, False, 8)[0] * weights).sum(),
                                   logits)   # from bf16 logits: the gradient comes back through the cast
    assert (bgrad - ref_grad).abs().max() < 0.05 * ref_grad.abs().max()


def test_keep_freed_memory_keeps_a_freed_tensors_pages():
    "After it, freeing a 200 MB tensor leaves its pages with the process (by default glibc unmaps them at once)."
    import os
    if not keep_freed_memory():
        pytest.skip("not glibc")
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    a = torch.ones(50_000_000)
    before = rss()
    del a
    assert before - rss() < 50e6


def test_sample_tokens_draws_each_token_with_its_probability():
    p = torch.tensor([[0.2, 0.0, 0.5, 0.3], [0.0, 0.0, 0.0, 2.0]])      # rows need not sum to 1
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_tokens(p.repeat(1000, 1), g).view(1000, 2) for _ in range(40)])   # 40,000 per row
    freq = torch.stack([torch.bincount(draws[:, r], minlength=4) / len(draws) for r in range(2)])
    assert (freq - p / p.sum(1, keepdim=True)).abs().max() < 0.01
    assert freq[0, 1] == 0 and (freq[1] == torch.tensor([0.0, 0, 0, 1])).all()   # probability 0: never drawn


def test_sample_tokens_sums_in_fp64():
    """An fp32 cumulative sum rounds each entry to the fp32 grid (ulp 6e-8 above 0.5), so a token of probability 1e-9
    that happens to cross a rounding midpoint takes a whole ulp, 60× its probability, from its neighbour. Here a draw
    that belongs to token 1 (p 2.9e-8) would go to token 2 (p 1e-9) with an fp32 sum; the sampler must give token 1."""
    u = float(1.0 - torch.rand(1, 1, generator=torch.Generator().manual_seed(7), dtype=torch.float64))  # its uniform
    p = torch.tensor([[u - 1.5e-8, 2.9e-8, 1e-9, 0.0]])
    p[0, 3] = 1.0 - float(p[0, :3].sum(dtype=torch.float64))
    v = u * float(p.cumsum(-1, dtype=torch.float64)[0, -1])          # where the draw lands
    c64 = p[0].double().cumsum(0)
    assert c64[0] < v <= c64[1]                                        # token 1's interval ...
    assert int(torch.searchsorted(p.cumsum(-1).double(), torch.tensor([[v]], dtype=torch.float64))) == 2   # fp32 sums: 2
    assert int(sample_tokens(p, torch.Generator().manual_seed(7))) == 1


def test_completion_mask_stops_after_the_first_eos():
    ids = torch.tensor([[5, 6, 0, 7, 0], [5, 6, 7, 8, 9], [0, 5, 5, 5, 5]])
    assert completion_mask(ids, 0).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_sampling_respects_min_tokens_and_pads_ended_rows(tiny):
    model, tok = tiny
    eos = tok.eos_token_id
    enc = tok(["the film", "a long and boring"], return_tensors="pt", padding=True, padding_side="left")
    # a model that always prefers EOS: barred for the first 3 tokens, then every row ends at once
    def eos_first(module, inputs, out):
        out = out.clone()
        out[..., eos] += 100.0
        return out
    hook = model.get_output_embeddings().register_forward_hook(eos_first)
    try:
        ids, mask = sample_completions(model, enc["input_ids"], enc["attention_mask"], 10, 3, eos, tok.pad_token_id,
                                       torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert ids.shape == (2, 4) and (ids[:, 3] == eos).all() and (ids[:, :3] != eos).all()
    assert mask.tolist() == [[1, 1, 1, 1]] * 2


def test_loss_and_gradient_equal_trls_on_the_same_batch(tiny, tmp_path):
    "Same prompts, completions, advantages and reference log-probs: our loss and its gradient are TRL's `_compute_loss`."
    from trl import GRPOTrainer
    from rewardsae.rlhf import _grpo_config, grpo_reward
    model, tok = tiny
    cfg = preset("smoke", compute_dtype="float32")
    prompts = make_prompts(tok, 4, seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[grpo_reward(e_count, "e"), grpo_reward(e_count, "e2")],
                          args=_grpo_config(cfg, tmp_path), train_dataset=prompts, processing_class=tok)
    trainer.current_gradient_accumulation_steps = 1
    texts = [p for p in prompts["prompt"][:2] for _ in range(4)]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    g = torch.Generator().manual_seed(0)
    c_ids, c_mask = sample_completions(model, enc["input_ids"], enc["attention_mask"], 8, 4, tok.eos_token_id,
                                       tok.pad_token_id, g)
    adv, _ = group_advantages(torch.tensor([3.0, 1, 0, 2, 5, 5, 1, 0]), 4)
    ids, mask = torch.cat([enc["input_ids"], c_ids], 1), torch.cat([enc["attention_mask"], c_mask], 1)
    n = c_ids.shape[1]
    with torch.no_grad():
        ref = token_logps(model, ids, mask, n)[0] + 0.3 * torch.randn(8, n, generator=g)   # a reference apart
    inputs = {"prompt_ids": enc["input_ids"], "prompt_mask": enc["attention_mask"], "completion_ids": c_ids,
              "completion_mask": c_mask, "advantages": adv, "ref_per_token_logps": ref,
              "num_items_in_batch": c_mask.sum()}
    model.zero_grad()
    theirs = trainer._compute_loss(model, inputs)
    theirs.backward()
    g_theirs = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    lp, _ = token_logps(model, ids, mask, n)
    ours, _ = grpo_loss(lp, lp.detach(), ref, adv, c_mask.float(), float(c_mask.sum()), cfg.beta, cfg.clip_eps)
    ours.backward()
    assert abs(float(ours.detach()) - float(theirs.detach())) < 1e-5 * max(1.0, abs(float(theirs.detach())))
    # TRL numbers positions 0.. over the padded row, we from each row's first real token: rotary attention depends on
    # differences only, so the two agree to rounding
    rel = [float((a.grad - b).norm() / b.norm()) for a, b in zip(model.parameters(), g_theirs) if b.norm() > 0]
    assert max(rel) < 1e-5     # rounding: 3e-7; without TRL's importance-weighted KL: 3.5e-3
    assert sum(float(b.abs().sum()) for b in g_theirs) > 0
    model.zero_grad()


@pytest.mark.parametrize("name", ["tiny-neox", "tiny-llama"])
def test_resume_repeats_the_run_exactly(tmp_path, name):
    "Killed after step 1's checkpoint, a rerun resumes from it (generator state included) and ends bit-identical."
    cfg = replace(preset("smoke"), steps=3, save_steps=1)
    whole, tok = _model(name)
    assert decodes_lean(whole) == (name == "tiny-llama")
    prompts = make_prompts(tok, 6, seed=0)["prompt"]
    log_a = train_grpo(whole, tok, prompts, e_count, cfg, tmp_path / "a")
    part, _ = _model(name)
    train_grpo(part, tok, prompts, e_count, replace(cfg, steps=1), tmp_path / "b")
    assert latest_checkpoint(tmp_path / "b" / "checkpoints") is None      # no checkpoint at the end of a run...
    part, _ = _model(name)
    train_grpo(part, tok, prompts, e_count, replace(cfg, steps=2), tmp_path / "c")
    ck = latest_checkpoint(tmp_path / "c" / "checkpoints")
    assert ck.name == "step-1"                                            # ...one after every save_steps before it
    resumed, _ = _model(name)
    log_c = train_grpo(resumed, tok, prompts, e_count, cfg, tmp_path / "c")
    assert list(log_c["step"]) == [1, 2, 3] and (log_c["reward"] == log_a["reward"]).all()
    assert all(torch.equal(x, y) for x, y in zip(whole.parameters(), resumed.parameters()))
    assert [p.name for p in (tmp_path / "c" / "checkpoints").iterdir()] == ["step-2"]   # only the newest is kept
    assert not all(torch.equal(x, y) for x, y in zip(whole.parameters(), _model(name)[0].parameters()))   # it trained


@pytest.mark.parametrize("name", ["tiny-neox", "tiny-llama"])
def test_bf16_update_matches_the_fp32_update(name):
    """On the same batch, the bf16 path (autocast policy, reference with bf16 linear layers, through LlamaDecoder for
    a Llama) gives the fp32 update to bf16's precision: KL within 1e-3, loss within 2%, gradient direction cosine
    > 0.99. (Whole runs cannot be compared sample by sample: bf16 moves each cumulative probability a little, which
    changes some draws.)"""
    from rewardsae.grpo import _autocast, frozen_reference
    model, tok = _model(name)      # its own copy: GRPOTrainer alters the shared one
    texts = [p for p in make_prompts(tok, 2, seed=1)["prompt"] for _ in range(4)]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    c_ids, c_mask = sample_completions(model, enc["input_ids"], enc["attention_mask"], 8, 4, tok.eos_token_id,
                                       tok.pad_token_id, torch.Generator().manual_seed(0))
    ids, mask = torch.cat([enc["input_ids"], c_ids], 1), torch.cat([enc["attention_mask"], c_mask], 1)
    adv, _ = group_advantages(torch.tensor([3.0, 1, 0, 2, 5, 5, 1, 0]), 4)
    moved = frozen_reference(model).requires_grad_(True)   # a policy some way from the reference
    with torch.no_grad():
        for q in moved.parameters():
            q.add_(0.02 * torch.randn(q.shape, generator=torch.Generator().manual_seed(q.numel())))
    out = {}
    for dt in (None, torch.bfloat16):
        ref = frozen_reference(model, dt)
        assert all(q.dtype == (dt or torch.float32) for n, q in ref.named_parameters()
                   if "dense" in n or "query" in n or "proj" in n)
        with torch.no_grad(), _autocast(dt):
            ref = LlamaDecoder(ref).load(len(ids), 1) if decodes_lean(ref) else ref
            ref_lp = token_logps(ref, ids, mask, c_ids.shape[1], entropy=False)[0]
        moved.zero_grad()
        with _autocast(dt):
            lp, _ = token_logps(moved, ids, mask, c_ids.shape[1])
        loss, kl = grpo_loss(lp, lp.detach(), ref_lp, adv, c_mask.float(), float(c_mask.sum()), 0.05, 0.2)
        loss.backward()
        out[dt] = (float(loss.detach()), float((kl.detach() * c_mask).sum() / c_mask.sum()),
                   torch.cat([q.grad.flatten() for q in moved.parameters()]))
    (l32, k32, g32), (l16, k16, g16) = out[None], out[torch.bfloat16]
    assert k32 > 0.01 and abs(k32 - k16) < 1e-3 and abs(l32 - l16) < 0.02 * abs(l32)
    assert float(torch.nn.functional.cosine_similarity(g32, g16, dim=0)) > 0.99


def test_too_few_prompts_is_refused_before_work(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(ValueError, match="needs 4 prompts"):
        train_grpo(model, tok, ["a", "b"], e_count, preset("smoke"), tmp_path)
    assert not (tmp_path / "log.csv").exists()
