"""The latent-usage test (`vital eval --usage`): its three runs decode as far as the evaluation does."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("cap", [2, 7])
def test_latent_usage_runs_decode_to_the_callers_token_cap(tiny_model, phantom_samples, cap: int) -> None:
    """Natural, donor and noise answers are decoded with the caller's `max_new_tokens`, not the bundle's
    default: at a K that leaves sentences written (a curriculum stage below the chain's depth), a shorter cap
    cuts the chain before "Answer:" and the natural run scores 0 while the evaluation itself does not."""
    from training.eval.items import from_sample
    from training.eval.usage import latent_usage

    closed = [s for s in phantom_samples if from_sample(s).kind != "open"][:4]
    assert len(closed) == 4
    calls: list[tuple[int | None, list[int]]] = []
    real = tiny_model.answer

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((kwargs.get("max_new_tokens"), [len(a.tokens) for a in out]))
        return out

    tiny_model.answer = spy
    try:
        report = latent_usage(tiny_model, closed, k=1, batch_size=4, max_new_tokens=cap)
    finally:
        del tiny_model.answer  # back to the class's method
    assert [c[0] for c in calls] == [cap, cap, cap]  # natural, donor, noise
    assert all(n <= cap for _, lens in calls for n in lens)
    assert max(n for _, lens in calls for n in lens) == cap  # a random model writes to the cap
    assert report["natural"]["n"] == 4 and report["k"] == 1


def test_latent_usage_reports_the_soft_feeds_input_norm(tiny_model, phantom_samples) -> None:
    """With `latent.feed: soft` the report also gives the norm of what is fed (a mix of token embeddings, at
    most the largest embedding's norm), not only that of the hidden states it is computed from."""
    from training.eval.items import from_sample
    from training.eval.usage import latent_usage

    closed = [s for s in phantom_samples if from_sample(s).kind != "open"][:3]
    feed = tiny_model.config.latent.feed
    tiny_model.config.latent.feed = "soft"
    try:
        report = latent_usage(tiny_model, closed, k=2, batch_size=2, max_new_tokens=2)
    finally:
        tiny_model.config.latent.feed = feed
    emb = tiny_model.core.model.language_model.embed_tokens.weight.float().norm(dim=-1)
    assert report["feed"] == "soft" and 0 < report["fed_input_norm"] <= float(emb.max()) + 1e-4
    assert report["fed_input_norm"] < report["fed_norm"]  # the hidden states are far larger than embeddings
    plain = latent_usage(tiny_model, closed, k=2, batch_size=2, max_new_tokens=2)
    assert "fed_input_norm" not in plain
