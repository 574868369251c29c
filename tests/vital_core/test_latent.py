"""The latent loop: cache correctness, batching, train/serve parity, gradients, no leaked state."""

from __future__ import annotations

import threading

import pytest
import torch

from vital_core.latent import latent_forward
from vital_core.preprocess import encode_answers

ATOL = 2e-4


def _nocache_latents(model, batch, k: int, latents: torch.Tensor) -> torch.Tensor:
    """Recompute h_0..h_K without a cache: one full pass over prefix + spliced latents h_0..h_{K-1}."""
    vl = model.core.model
    text = vl.language_model
    ids, attn = batch.input_ids, batch.attention_mask
    bsz, plen = ids.shape
    pos, _ = vl.get_rope_index(ids, batch.mm_token_type_ids, batch.image_grid_thw, attention_mask=attn)
    nxt = pos.amax(dim=(0, 2)) + 1
    extra = (nxt[:, None] + torch.arange(k)[None]).unsqueeze(0).expand(3, -1, -1)  # (3, B, K)
    embeds = torch.cat([text.embed_tokens(ids), latents[:, :k]], dim=1)  # (B, L+K, H)
    out = vl(
        input_ids=None,
        inputs_embeds=embeds,
        attention_mask=torch.cat([attn, torch.ones(bsz, k, dtype=attn.dtype)], dim=1),
        position_ids=torch.cat([pos, extra], dim=2),
        pixel_values=batch.pixel_values,
        image_grid_thw=batch.image_grid_thw,
        use_cache=False,
    )
    return out.last_hidden_state[:, plen - 1 :]  # (B, K+1, H) = h_0..h_K


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_cached_loop_equals_nocache_recomputation(tiny_model, images, questions, k):
    batch = tiny_model.encode(images, questions)
    assert len(set(batch.attention_mask.sum(1).tolist())) > 1, "prompts must differ in length (left padding)"
    with torch.inference_mode():
        out = tiny_model(batch, k, max_new_tokens=2)
        ref = _nocache_latents(tiny_model, batch, k, out.latents)
    assert out.latents.shape == (len(images), k + 1, tiny_model.hidden_size)
    torch.testing.assert_close(out.latents, ref, atol=ATOL, rtol=1e-4)


def test_batched_equals_one_by_one(tiny_model, images, questions):
    ks = [0, 2, 4, 3]
    with torch.inference_mode():
        batched = tiny_model(tiny_model.encode(images, questions), ks, max_new_tokens=6)
        for i, k in enumerate(ks):
            alone = tiny_model(
                tiny_model.encode(images[i : i + 1], questions[i : i + 1]), k, max_new_tokens=6
            )
            torch.testing.assert_close(batched.latents[i, : k + 1], alone.latents[0], atol=ATOL, rtol=1e-4)
            assert batched.tokens[i] == alone.tokens[0]


def test_teacher_forced_batched_equals_one_by_one(tiny_model, images, questions):
    ks = [1, 4, 0, 2]
    answers = ["Yes.", "The liver is in the upper left of the image.", "A round bright lesion.", "No."]
    aid, am = encode_answers(answers, tiny_model.tokenizer)
    with torch.inference_mode():
        batched = tiny_model(tiny_model.encode(images, questions), ks, answer_ids=aid, answer_mask=am)
        for i, k in enumerate(ks):
            a1, m1 = encode_answers(answers[i : i + 1], tiny_model.tokenizer)
            alone = tiny_model(
                tiny_model.encode(images[i : i + 1], questions[i : i + 1]), k, answer_ids=a1, answer_mask=m1
            )
            n = int(m1.sum())
            torch.testing.assert_close(batched.logits[i, :n], alone.logits[0, :n], atol=ATOL, rtol=1e-4)


def test_teacher_forcing_scores_the_greedy_answer(tiny_model, images, questions):
    """Teacher-forcing the model's own greedy answer reproduces its argmax at every position."""
    with torch.inference_mode():
        batch = tiny_model.encode(images[:1], questions[:1])
        greedy = tiny_model(batch, 3, max_new_tokens=5)
        toks = torch.tensor([greedy.tokens[0]])
        tf = tiny_model(batch, 3, answer_ids=toks, answer_mask=torch.ones_like(toks))
    assert tf.logits[0].argmax(-1).tolist() == greedy.tokens[0]


def test_train_mode_latents_equal_inference_path(tiny_model, images, questions):
    aid, am = encode_answers(["Yes."] * 4, tiny_model.tokenizer)
    batch = tiny_model.encode(images, questions)
    with torch.inference_mode():
        served = tiny_model(batch, [4, 3, 2, 1], max_new_tokens=2)
    tiny_model.train()
    try:
        trained = tiny_model(batch, [4, 3, 2, 1], answer_ids=aid, answer_mask=am)
    finally:
        tiny_model.eval()
    assert trained.latents.requires_grad
    torch.testing.assert_close(trained.latents.detach(), served.latents, atol=ATOL, rtol=1e-4)
    assert trained.logits[:, 0].argmax(-1).tolist() == [t[0] for t in served.tokens]


def test_gradients_reach_lora_through_every_latent_step(tiny_model, images, questions):
    """Capture one LoRA module's output at every call; each must receive gradient from the answer loss."""
    lora_a = next(
        m
        for n, m in tiny_model.backbone.named_modules()
        if n.endswith("layers.0.self_attn.v_proj.lora_A.default")
    )
    outputs: list[torch.Tensor] = []

    def hook(_mod, _inp, out):
        out.retain_grad()
        outputs.append(out)

    handle = lora_a.register_forward_hook(hook)
    k = 4
    aid, am = encode_answers(["The liver is in the upper left."], tiny_model.tokenizer)
    try:
        out = tiny_model(tiny_model.encode(images[:1], questions[:1]), k, answer_ids=aid, answer_mask=am)
        out.loss.backward()
    finally:
        handle.remove()
    # calls: prefill, K latent steps, one teacher-forced answer pass
    assert len(outputs) == k + 2
    for step, o in enumerate(outputs[: k + 1]):
        assert o.grad is not None and o.grad.abs().sum() > 0, f"no gradient through call {step}"
    grads = [p.grad for n, p in tiny_model.backbone.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for n, p in tiny_model.backbone.named_parameters() if "lora_" not in n)
    tiny_model.zero_grad(set_to_none=True)


def test_interleaved_requests_do_not_leak_state(tiny_model, images, questions):
    vl = tiny_model.core.model
    with torch.inference_mode():
        alone_a = tiny_model(tiny_model.encode(images[:1], questions[:1]), 4, max_new_tokens=5)
        alone_b = tiny_model(tiny_model.encode(images[1:2], questions[1:2]), 2, max_new_tokens=5)
        # poison the module state HF would read: a stale rope_deltas from some other request
        vl.rope_deltas = torch.tensor([[123]])
        try:
            results: dict[str, list] = {"a": [], "b": []}

            def run(name, idx, k):
                for _ in range(3):
                    with torch.inference_mode():
                        out = tiny_model(
                            tiny_model.encode(images[idx : idx + 1], questions[idx : idx + 1]),
                            k,
                            max_new_tokens=5,
                        )
                    results[name].append(out)

            threads = [
                threading.Thread(target=run, args=("a", 0, 4)),
                threading.Thread(target=run, args=("b", 1, 2)),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            assert vl.rope_deltas.tolist() == [[123]], "the loop must not write module state"
            vl.rope_deltas = None
    for out in results["a"]:
        torch.testing.assert_close(out.latents, alone_a.latents, atol=ATOL, rtol=1e-4)
        assert out.tokens == alone_a.tokens
    for out in results["b"]:
        torch.testing.assert_close(out.latents, alone_b.latents, atol=ATOL, rtol=1e-4)
        assert out.tokens == alone_b.tokens


def test_greedy_stops_at_eos_and_respects_max_new_tokens(tiny_model, images, questions):
    batch = tiny_model.encode(images[:2], questions[:2])
    with torch.inference_mode():
        capped = latent_forward(tiny_model.core, batch, 1, max_new_tokens=3, stop_ids=[])
        assert all(len(t) == 3 for t in capped.tokens)
        # make the first greedy token of row 0 the stop token: decoding must end there (empty answer)
        first = capped.tokens[0][0]
        stopped = latent_forward(tiny_model.core, batch, 1, max_new_tokens=3, stop_ids=[first])
    assert stopped.tokens[0] == []
    assert stopped.tokens[1] == capped.tokens[1][: len(stopped.tokens[1])]


def test_invalid_k_is_rejected(tiny_model, images, questions):
    batch = tiny_model.encode(images[:2], questions[:2])
    with pytest.raises(ValueError, match="k must be"):
        tiny_model(batch, [1, 2, 3])
    with pytest.raises(ValueError, match="k must be"):
        tiny_model(batch, -1)


@pytest.mark.slow
def test_train_mode_latents_equal_static_served_path(tiny_model, images, questions):
    """One loop: the training pass (dynamic cache, autograd) and the static-cache serving path agree."""
    from vital_core.prefix_cache import PrefixCache
    from vital_core.static_cache import StaticRunner

    ks = [4, 0, 2, 1]
    aid, am = encode_answers(["Yes."] * 4, tiny_model.tokenizer)
    batch = tiny_model.encode(images, questions)
    runner, pcache = StaticRunner(tiny_model.core), PrefixCache(1 << 30)
    with torch.inference_mode():
        served = tiny_model(batch, ks, max_new_tokens=2, runner=runner, prefix_cache=pcache)
    tiny_model.train()
    try:
        trained = tiny_model(batch, ks, answer_ids=aid, answer_mask=am, runner=runner, prefix_cache=pcache)
    finally:
        tiny_model.eval()
    assert trained.latents.requires_grad and trained.prefix_hits is None, "training never uses the caches"
    torch.testing.assert_close(trained.latents.detach(), served.latents, atol=ATOL, rtol=1e-4)
    assert trained.logits[:, 0].argmax(-1).tolist() == [t[0] for t in served.tokens]


@pytest.mark.slow
@pytest.mark.parametrize("stop_every", [0, 3])  # 0: dynamic cache; else a static runner checking every n
def test_on_tokens_streams_each_step_and_equals_the_result(tiny_model, images, questions, stop_every):
    """The per-step callback gets every row's tokens in order, stop tokens and ended rows as None, and the
    rows concatenate to the returned tokens; a truthy return stops decoding early."""
    from vital_core.static_cache import StaticRunner

    runner = StaticRunner(tiny_model.core, stop_every=stop_every) if stop_every else None
    batch = tiny_model.encode(images[:3], questions[:3])
    with torch.inference_mode():
        ref = latent_forward(tiny_model.core, batch, [1, 3, 0], max_new_tokens=6, runner=runner)
        stops = {ref.tokens[0][1], ref.tokens[2][0]}  # row 0 ends after one token, row 2 at once
        plain = latent_forward(
            tiny_model.core, batch, [1, 3, 0], max_new_tokens=8, stop_ids=stops, runner=runner
        )
        steps: list[list[int | None]] = []
        streamed = latent_forward(
            tiny_model.core,
            batch,
            [1, 3, 0],
            max_new_tokens=8,
            stop_ids=stops,
            runner=runner,
            on_tokens=steps.append,
        )
        calls: list[int] = []
        cut = latent_forward(
            tiny_model.core,
            batch,
            2,
            max_new_tokens=8,
            runner=runner,
            on_tokens=lambda step: calls.append(1) or len(calls) >= 2,
        )
    assert streamed.tokens == plain.tokens
    assert all(len(s) == 3 for s in steps) and 1 < len(steps) <= 8
    for r in range(3):
        got = [s[r] for s in steps]
        n = len(plain.tokens[r])
        assert got[:n] == plain.tokens[r] and all(t is None for t in got[n:])
    assert steps[0][2] is None and not set(t for s in steps for t in s) & stops
    # stop asked from the 2nd step on: decoding ends at the next host check (steps 2..1+n arrive together)
    assert len(calls) == 1 + max(stop_every, 1) and all(len(t) == len(calls) < 8 for t in cut.tokens)


def test_feed_norm_rescales_only_what_is_fed(tiny_model, images, questions):
    from vital_core.latent import latent_forward

    batch = tiny_model.encode(images[:2], questions[:2])
    with torch.inference_mode():
        plain = latent_forward(tiny_model.core, batch, 3, max_new_tokens=2)
        seen = []

        def spy(i, h):
            seen.append(h.clone())
            return h

        scaled = latent_forward(
            tiny_model.core, batch, 3, max_new_tokens=2, feed_norm=0.25, feed_override=spy
        )
    # h_0 is the same; later states differ because a rescaled state was fed
    assert torch.allclose(plain.latents[:, 0], scaled.latents[:, 0])
    assert not torch.allclose(plain.latents[:, 1], scaled.latents[:, 1])
    assert len(seen) == 3 and torch.allclose(seen[0], scaled.latents[:, :1])  # the override sees h_i


def test_feed_override_of_the_natural_states_changes_nothing(tiny_model, images, questions):
    from vital_core.latent import latent_forward

    batch = tiny_model.encode(images[:2], questions[:2])
    with torch.inference_mode():
        ref = latent_forward(tiny_model.core, batch, 3, max_new_tokens=4)
        same = latent_forward(
            tiny_model.core, batch, 3, max_new_tokens=4, feed_override=lambda i, h: ref.latents[:, i : i + 1]
        )
        swapped = latent_forward(
            tiny_model.core,
            batch,
            3,
            max_new_tokens=4,
            feed_override=lambda i, h: ref.latents.flip(0)[:, i : i + 1],
        )
    assert same.tokens == ref.tokens and torch.allclose(same.latents, ref.latents, atol=1e-5)
    assert not torch.allclose(swapped.latents[:, 1:], ref.latents[:, 1:])


def test_embed_rms_feed_is_a_config_setting(images, questions):
    from vital_core.config import ConfigError, LatentConfig
    from vital_core.model import build_model
    from vital_core.presets import tiny

    with pytest.raises(ConfigError, match="latent.feed"):
        LatentConfig(feed="rms")
    cfg = tiny()
    cfg.latent.feed = "embed_rms"
    m = build_model(cfg)
    norm = m.feed_norm()
    emb = m.core.model.language_model.embed_tokens.weight
    assert abs(norm - float(emb.norm(dim=-1).mean())) < 1e-6
    a = m.answer(images[:1], questions[:1], k=2)[0]
    cfg2 = tiny()
    b = build_model(cfg2).answer(images[:1], questions[:1], k=2)[0]
    assert torch.allclose(a.latents[0], b.latents[0]) and not torch.allclose(a.latents[1:], b.latents[1:])


def test_soft_feed_is_the_expected_token_embedding(images, questions):
    """`latent.feed: soft` feeds softmax(lm_head(h) / T) · E: the same as a hidden-feed model whose fed states
    are mapped so by hand; the fed vector is a convex mix of token embeddings; T must be positive."""
    from vital_core.config import ConfigError, LatentConfig
    from vital_core.model import build_model
    from vital_core.presets import tiny

    with pytest.raises(ConfigError, match="soft_temperature"):
        LatentConfig(feed="soft", soft_temperature=0.0)
    cfg = tiny()
    cfg.latent.feed, cfg.latent.soft_temperature = "soft", 0.5
    soft = build_model(cfg)
    plain = build_model(tiny())  # same seed, same weights, feed: hidden
    emb = plain.core.model.language_model.embed_tokens.weight

    def by_hand(i, h):
        p = torch.softmax(plain.core.lm_head(h).float() / 0.5, dim=-1)
        return (p @ emb.float()).to(h.dtype)

    fed = []
    a = soft.answer(
        images[:2], questions[:2], k=3, feed_override=lambda i, h: fed.append(soft.soft_feed(h)) or h
    )
    b = plain.answer(images[:2], questions[:2], k=3, feed_override=by_hand)
    c = plain.answer(images[:2], questions[:2], k=3)
    for x, y, z in zip(a, b, c):
        assert x.tokens == y.tokens and torch.allclose(x.latents, y.latents, atol=1e-5)
        assert not torch.allclose(x.latents[1:], z.latents[1:])  # a hidden feed is something else
    norms = torch.cat(fed).float().norm(dim=-1)
    assert float(norms.max()) <= float(emb.float().norm(dim=-1).max()) + 1e-5


def test_soft_feed_is_differentiable_through_the_lm_head(images, questions):
    """Training through a soft feed: h_2 depends on the LM head (through what h_1 fed) only with feed: soft."""
    from vital_core.model import build_model
    from vital_core.presets import tiny

    grads = {}
    for feed in ("soft", "hidden"):
        cfg = tiny()
        cfg.latent.feed = feed
        m = build_model(cfg)
        m.core.requires_grad_(True)
        out = m(m.encode(images[:1], questions[:1]), 2, max_new_tokens=1)
        w = m.core.lm_head.weight
        (g,) = torch.autograd.grad(out.latents[:, 2].sum(), w, allow_unused=True)
        grads[feed] = 0.0 if g is None else float(g.abs().sum())
    assert grads["soft"] > 0 and grads["hidden"] == 0.0
