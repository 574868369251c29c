"""Prefix cache: a hit equals a cold run, LRU eviction by bytes, repeated and concurrent images."""

from __future__ import annotations

import threading

import pytest
import torch

from vital_core.latent import latent_forward
from vital_core.prefix_cache import PrefixCache, PrefixEntry, image_key
from vital_core.static_cache import StaticRunner

ATOL = 2e-4


def _run(model, images, questions, k, pcache=None, runner=None, n=5):
    batch = model.encode(images, questions)
    keys = [pcache.key(im) for im in images] if pcache is not None else None
    with torch.inference_mode():
        return latent_forward(
            model.core,
            batch,
            k,
            max_new_tokens=n,
            stop_ids=(),
            prefix_cache=pcache,
            image_keys=keys,
            runner=runner,
        )


@pytest.mark.slow
def test_hit_equals_cold_run_and_plain_path(tiny_model, images, questions):
    pcache = PrefixCache(1 << 30, model_key="tiny")
    plain = _run(tiny_model, images[:2], questions[:2], [2, 0])
    cold = _run(tiny_model, images[:2], questions[:2], [2, 0], pcache)
    assert cold.prefix_hits == [False, False] and (pcache.misses, pcache.hits, len(pcache)) == (2, 0, 2)
    warm = _run(tiny_model, images[:2], questions[:2], [2, 0], pcache)
    assert warm.prefix_hits == [True, True] and pcache.hits == 2
    assert warm.tokens == cold.tokens == plain.tokens
    torch.testing.assert_close(warm.latents, cold.latents, atol=0, rtol=0)  # the same entry: bit-identical
    torch.testing.assert_close(warm.latents, plain.latents, atol=ATOL, rtol=1e-4)


@pytest.mark.slow
def test_other_questions_on_the_same_image_hit(tiny_model, images, questions):
    """A new question about a cached image reuses its prefix and answers as if computed from scratch."""
    pcache = PrefixCache(1 << 30)
    runner = StaticRunner(tiny_model.core)
    _run(tiny_model, images[:1], questions[:1], 1, pcache)
    for q in questions[1:]:
        plain = _run(tiny_model, images[:1], [q], 3)
        hit = _run(tiny_model, images[:1], [q], 3, pcache, runner)
        assert hit.prefix_hits == [True]
        assert hit.tokens == plain.tokens
        torch.testing.assert_close(hit.latents, plain.latents, atol=ATOL, rtol=1e-4)
    # mixed batch: one cached image, one new, different question lengths (gaps in the layout are masked)
    mixed = _run(tiny_model, [images[0], images[2]], [questions[3], questions[2]], [4, 1], pcache, runner)
    alone = [_run(tiny_model, [images[i]], [questions[j]], kk) for i, j, kk in [(0, 3, 4), (2, 2, 1)]]
    assert mixed.prefix_hits == [True, False]
    assert mixed.tokens == [a.tokens[0] for a in alone]


def test_same_image_twice_in_one_batch_is_computed_once(tiny_model, images, questions):
    pcache = PrefixCache(1 << 30)
    out = _run(tiny_model, [images[1], images[1]], questions[:2], 2, pcache)
    assert pcache.misses == 1 and len(pcache) == 1
    assert out.prefix_hits == [False, True]
    for i in range(2):
        assert out.tokens[i] == _run(tiny_model, images[1:2], questions[i : i + 1], 2).tokens[0]


def test_eviction_by_bytes(tiny_model, images, questions):
    probe = PrefixCache(1 << 30)
    _run(tiny_model, images[:1], questions[:1], 0, probe, n=1)
    size = probe.bytes
    assert size > 0
    pcache = PrefixCache(int(2.5 * size))  # room for two same-size entries
    for i in (0, 3, 0):  # 0 becomes most recently used
        _run(tiny_model, images[i : i + 1], questions[:1], 0, pcache, n=1)
    assert len(pcache) == 2 and pcache.bytes == 2 * size
    _run(tiny_model, [images[1].resize((128, 128))], questions[:1], 0, pcache, n=1)  # a third image
    keys = [pcache.key(images[0]), pcache.key(images[3])]
    assert keys[0] in pcache and keys[1] not in pcache, "the least recently used entry goes first"
    assert pcache.bytes <= pcache.max_bytes
    tiny = PrefixCache(size - 1)
    _run(tiny_model, images[:1], questions[:1], 0, tiny, n=1)
    assert len(tiny) == 0 and tiny.bytes == 0, "an entry larger than the bound is not kept"


def test_entry_accounting_and_keys():
    t = torch.zeros(2, 3, 4)
    entry = PrefixEntry(ids=torch.zeros(3, dtype=torch.long), keys=[t], values=[t.clone()], next_pos=7)
    assert entry.nbytes == 3 * 8 + 2 * 24 * 4
    pc = PrefixCache(2 * entry.nbytes)
    pc.put("a", entry)
    pc.put("a", entry)  # refreshing does not double-count
    assert pc.bytes == entry.nbytes
    pc.clear()
    assert len(pc) == 0 and pc.bytes == 0
    with pytest.raises(ValueError):
        PrefixCache(-1)


def test_image_key_depends_on_pixels_and_model(images):
    a = image_key(images[0], "m1")
    assert a == image_key(images[0].copy(), "m1")
    assert a != image_key(images[0], "m2")
    assert a != image_key(images[3], "m1")
    px = images[0].copy()
    px.putpixel((0, 0), (255, 0, 0))
    assert a != image_key(px, "m1")


def test_concurrent_requests_on_the_same_image(tiny_model, images, questions):
    """Threads asking about one image through one cache (and one static runner) get their solo answers."""
    pcache = PrefixCache(1 << 30)
    runner = StaticRunner(tiny_model.core)
    expected = {j: _run(tiny_model, images[2:3], questions[j : j + 1], 2).tokens for j in range(3)}
    results: dict[int, list] = {j: [] for j in range(3)}
    errors: list[BaseException] = []

    def ask(j: int) -> None:
        try:
            for _ in range(2):
                results[j].append(
                    _run(tiny_model, images[2:3], questions[j : j + 1], 2, pcache, runner).tokens
                )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(j,)) for j in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for j in range(3):
        assert results[j] == [expected[j]] * 2
    assert len(pcache) == 1 and pcache.hits + pcache.misses == 6 and pcache.hits >= 3
