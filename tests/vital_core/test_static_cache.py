"""Serving's static-cache step: the same tokens as the dynamic-cache loop, on CPU and (marked) on CUDA."""

from __future__ import annotations

import os

import pytest
import torch

from vital_core.latent import latent_forward
from vital_core.static_cache import StaticRunner

ATOL = 2e-4
KS = [0, 4, [0, 1, 2, 3, 4]]  # uniform K, and per-sample K covering 0…4 in one batch


def _pair(model, batch, k, runner, stop_ids=(), n=6):
    with torch.inference_mode():
        dyn = latent_forward(model.core, batch, k, max_new_tokens=n, stop_ids=stop_ids)
        sta = latent_forward(model.core, batch, k, max_new_tokens=n, stop_ids=stop_ids, runner=runner)
    return dyn, sta


@pytest.mark.slow
def test_static_equals_dynamic_batched_per_sample_k(tiny_model, images, questions):
    """K = 0…4 per sample and uniform, five left-padded rows: identical tokens, latents within float noise."""
    runner = StaticRunner(tiny_model.core)
    batch = tiny_model.encode([*images, images[0]], [*questions, "Which organ is shown?"])
    assert len(set(batch.attention_mask.sum(1).tolist())) > 1, "rows must differ in length (left padding)"
    for k in KS:
        dyn, sta = _pair(tiny_model, batch, k, runner, n=5)
        assert sta.tokens == dyn.tokens, f"k={k}"
        assert all(len(t) == 5 for t in sta.tokens)  # no stop ids: every token compared
        torch.testing.assert_close(sta.latents, dyn.latents, atol=ATOL, rtol=1e-4)


@pytest.mark.slow
def test_static_bucket_padding_and_stop_ids(tiny_model, images, questions):
    """Three rows run in the batch-4 bucket; with the model's stop set, answers end where the dynamic ones do."""
    runner = StaticRunner(tiny_model.core, stop_every=3)
    batch = tiny_model.encode(images[:3], questions[:3])
    assert runner.bucket_shape(3, 10) == (4, 64) and runner.bucket_shape(9, 300) == (16, 512)
    first = _pair(tiny_model, batch, [1, 3, 0], runner, n=4)[0].tokens
    stops = {first[0][1], first[2][0]}  # row 0 stops at its 2nd token, row 2 at once
    dyn, sta = _pair(tiny_model, batch, [1, 3, 0], runner, stop_ids=stops, n=8)
    assert sta.tokens == dyn.tokens
    assert len(sta.tokens[0]) <= 1 and sta.tokens[2] == []


@pytest.mark.slow
def test_bucket_eviction_keeps_answers_right(tiny_model, images, questions):
    runner = StaticRunner(tiny_model.core, max_buckets=1, length_multiple=16)
    for n, k in [(1, 2), (2, 4), (1, 0)]:
        batch = tiny_model.encode(images[:n], questions[:n])
        dyn, sta = _pair(tiny_model, batch, k, runner, n=5)
        assert sta.tokens == dyn.tokens
        assert len(runner._buckets) == 1


def test_static_path_is_inference_only(tiny_model, images, questions):
    """With autograd on (training) the runner is ignored: the loop stays on the dynamic cache."""
    runner = StaticRunner(tiny_model.core)
    batch = tiny_model.encode(images[:1], questions[:1])
    assert torch.is_grad_enabled()
    out = latent_forward(tiny_model.core, batch, 1, max_new_tokens=2, stop_ids=(), runner=runner)
    assert out.tokens and not runner._buckets


def test_runner_rejects_bad_settings(tiny_model):
    with pytest.raises(ValueError, match="mode"):
        StaticRunner(tiny_model.core, mode="fast")
    with pytest.raises(ValueError, match="stop_every"):
        StaticRunner(tiny_model.core, stop_every=0)
    assert StaticRunner(tiny_model.core, mode="graphs").mode == "eager", "CUDA graphs fall back on CPU"


@pytest.mark.slow
def test_compiled_step_equals_eager_on_cpu(tiny_model, images, questions):
    """`torch.compile` of the static step (aot_eager backend: traced, no C++ build) gives the same tokens."""
    if os.environ.get("VITAL_SKIP_COMPILE"):
        pytest.skip("VITAL_SKIP_COMPILE set")
    runner = StaticRunner(tiny_model.core, mode="compile", compile_backend="aot_eager")
    batch = tiny_model.encode(images[:2], questions[:2])
    for k in (0, [3, 1]):
        dyn, sta = _pair(tiny_model, batch, k, runner, n=4)
        assert sta.tokens == dyn.tokens
        torch.testing.assert_close(sta.latents, dyn.latents, atol=ATOL, rtol=1e-4)


@pytest.mark.gpu
def test_cuda_graph_step_equals_dynamic(tiny_config, images, questions):
    """On CUDA: the captured graph replays the step; tokens equal the eager dynamic loop, K = 0…4."""
    from vital_core.model import build_model

    model = build_model(tiny_config, device="cuda").eval()
    runner = StaticRunner(model.core, mode="graphs")
    assert runner.mode == "graphs"
    batch = model.encode([*images, images[0]], [*questions, "Which organ is shown?"])
    for k in KS:
        dyn, sta = _pair(model, batch, k, runner)
        assert sta.tokens == dyn.tokens, f"k={k}"
        torch.testing.assert_close(sta.latents, dyn.latents, atol=1e-3, rtol=1e-3)
    bucket = next(iter(runner._buckets.values()))
    assert bucket.batch == 8
    assert bucket.graph is not None


@pytest.mark.gpu
def test_cuda_graph_step_has_no_host_sync(tiny_config, images, questions):
    """A replayed step never waits for the device (the stop check is the decode loop's only sync)."""
    from vital_core.model import build_model

    model = build_model(tiny_config, device="cuda").eval()
    runner = StaticRunner(model.core, mode="graphs")
    batch = model.encode(images[:2], questions[:2])
    with torch.inference_mode():
        latent_forward(model.core, batch, 2, max_new_tokens=2, stop_ids=(), runner=runner)  # capture
        from vital_core.prefill import prefill

        pre = prefill(model.core.model, batch)
        mask = torch.ones(2, pre.mask.shape[1] + 4, dtype=pre.mask.dtype, device="cuda")
        mask[:, : pre.mask.shape[1]] = pre.mask
        with runner.open(pre.cache, mask) as seq:
            torch.cuda.set_sync_debug_mode("error")
            try:
                h = seq.step(pre.h0, pre.next_pos)
                h = seq.step(h, pre.next_pos + 1)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    assert h.shape == pre.h0.shape and torch.isfinite(h).all()


def test_bucket_bytes_are_what_a_bucket_allocates(tiny_model, images, questions):
    """The up-front estimate (used to decide eviction before allocating) is the allocated size."""
    runner = StaticRunner(tiny_model.core, length_multiple=16, max_bytes=1 << 30)
    for n, k, new in [(1, 2, 3), (3, 4, 40)]:
        batch = tiny_model.encode(images[:n], questions[:n])
        with torch.inference_mode():
            latent_forward(tiny_model.core, batch, k, max_new_tokens=new, stop_ids=(), runner=runner)
        key = next(reversed(runner._buckets))
        assert runner._buckets[key].nbytes == runner.bucket_bytes(*key) > 0
    assert runner.nbytes == sum(runner.bucket_bytes(*key) for key in runner._buckets)


def test_byte_cap_evicts_least_recently_used(tiny_model, images, questions):
    """A cap of two small buckets: a third evicts the least recently used one, answers stay right, and
    the held bytes never exceed the cap (the count cap alone would have kept all three)."""
    probe = StaticRunner(tiny_model.core, length_multiple=16, max_bytes=1 << 30)
    plen = tiny_model.encode(images[:1], questions[:1]).input_ids.shape[1]
    short, long_ = 2, 4 * plen  # answer tokens: a short and a longer cache length
    shape = lambda n, new: probe.bucket_shape(n, plen + 2 + new)  # noqa: E731  (prompts of equal length)
    a, b, c = shape(1, short), shape(2, short), shape(1, long_)
    assert len({a, b, c}) == 3
    cap = probe.bucket_bytes(*a) + probe.bucket_bytes(*b) + probe.bucket_bytes(*c) // 2
    assert probe.bucket_bytes(*c) <= cap < sum(probe.bucket_bytes(*x) for x in (a, b, c))
    runner = StaticRunner(tiny_model.core, length_multiple=16, max_bytes=cap)
    q = [questions[0]] * 2  # same prompt length in every row
    for n, new in [(1, short), (2, short), (1, short), (1, long_)]:  # a, b, a again (b is now oldest), c
        batch = tiny_model.encode([images[0]] * n, q[:n])
        dyn, sta = _pair(tiny_model, batch, 2, runner, n=new)
        assert sta.tokens == dyn.tokens
        assert runner.nbytes <= cap
    assert list(runner._buckets) == [a, c]  # b (least recently used) went; a stayed


def test_batch_over_the_cap_runs_on_the_dynamic_cache(tiny_model, images, questions):
    runner = StaticRunner(tiny_model.core, max_bytes=1024)
    batch = tiny_model.encode(images[:2], questions[:2])
    assert not runner.fits(2, batch.input_ids.shape[1])
    dyn, sta = _pair(tiny_model, batch, 3, runner, n=4)
    assert sta.tokens == dyn.tokens and not runner._buckets and runner.nbytes == 0
    with pytest.raises(ValueError, match="max_bytes"):
        StaticRunner(tiny_model.core, max_bytes=0)


def test_default_cap_is_a_quarter_of_free_memory(tiny_model):
    from vital_core.static_cache import DEFAULT_MEMORY_FRACTION, available_bytes

    runner = StaticRunner(tiny_model.core)
    free = available_bytes(torch.device("cpu"))
    assert DEFAULT_MEMORY_FRACTION == 0.25 and free > 0
    assert abs(runner.max_bytes - free / 4) <= 0.05 * free  # free memory moves a little between reads
