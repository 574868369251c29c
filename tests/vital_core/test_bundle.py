"""Bundles: round trip, merged equals unmerged, scaffolding left unread, checksums, atomic writes."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from vital_core.bundle import BundleError, load_bundle, read_manifest, save_bundle, verify_bundle
from vital_core.cli import main as vital


@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    merged = save_bundle(tiny_model, root / "merged", provenance={"command": "test", "seed": 0})
    unmerged = save_bundle(tiny_model, root / "unmerged", merged=False)
    return merged, unmerged


def _latents(model, images, questions, k=3):
    with torch.inference_mode():
        return model(model.encode(images, questions), k, max_new_tokens=6)


def test_round_trip_gives_the_same_answers(tiny_model, saved, images, questions):
    loaded = load_bundle(saved[0], verify=True)
    ref, got = _latents(tiny_model, images, questions), _latents(loaded, images, questions)
    torch.testing.assert_close(got.latents, ref.latents, atol=1e-4, rtol=1e-4)
    assert got.tokens == ref.tokens
    assert loaded.config == tiny_model.config
    assert loaded.tokenizer.get_vocab() == tiny_model.tokenizer.get_vocab()


def test_merged_equals_unmerged(saved, images, questions):
    merged = load_bundle(saved[0])
    adapter = load_bundle(saved[1], merge=False)
    from peft import PeftModel

    assert isinstance(adapter.backbone, PeftModel) and not isinstance(merged.backbone, PeftModel)
    a, b = _latents(merged, images, questions), _latents(adapter, images, questions)
    torch.testing.assert_close(a.latents, b.latents, atol=1e-4, rtol=1e-4)
    assert a.tokens == b.tokens
    assert (saved[1] / "adapter" / "adapter_config.json").is_file()
    assert not read_manifest(saved[1])["merged"] and read_manifest(saved[0])["merged"]


def test_lora_changes_the_output(tiny_model, saved, images, questions):
    """The adapter is not a no-op (otherwise merged == unmerged would prove nothing)."""
    base = copy.deepcopy(tiny_model)
    base.backbone = base.backbone.unload()
    a, b = _latents(base, images, questions), _latents(tiny_model, images, questions)
    assert (a.latents - b.latents).abs().max() > 1e-3


def test_loading_without_scaffold_leaves_it_unread(saved, tmp_path, images, questions):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(saved[0], bundle)
    # Corrupt the scaffolding: any read of it would fail loudly.
    (bundle / "scaffold.safetensors").write_bytes(b"not a safetensors file")
    (bundle / "scaffold.json").write_text("{broken")
    model = load_bundle(bundle, verify=True)
    assert model.scaffold is None
    assert not any("scaffold" in n or "decoder" in n for n, _ in model.named_parameters())
    assert _latents(model, images[:1], questions[:1]).tokens
    with pytest.raises(BundleError, match="scaffold.json: unreadable"):
        load_bundle(bundle, scaffold=True)
    (bundle / "scaffold.json").write_text(json.dumps(json.loads((saved[0] / "scaffold.json").read_text())))
    with pytest.raises(BundleError, match="scaffold.safetensors: unreadable"):
        load_bundle(bundle, scaffold=True)


def test_scaffold_round_trip(tiny_model, saved):
    model = load_bundle(saved[0], scaffold=True)
    ref = tiny_model.scaffold.state_dict()
    for name, tensor in model.scaffold.state_dict().items():
        torch.testing.assert_close(tensor, ref[name])
    assert model.scaffold.decoder.lm_head.weight.data_ptr() == (
        model.scaffold.decoder.model.embed_tokens.weight.data_ptr()
    )
    h = torch.randn(2, tiny_model.hidden_size)
    assert model.scaffold.decode(h, model.tokenizer, max_tokens=4) == tiny_model.scaffold.decode(
        h, tiny_model.tokenizer, max_tokens=4
    )


def test_manifest_checksums_detect_tampering(saved, tmp_path):
    import shutil

    bundle = tmp_path / "t"
    shutil.copytree(saved[0], bundle)
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["provenance"] == {"command": "test", "seed": 0}
    assert {"torch", "transformers", "peft", "vital"} <= set(man["versions"])
    assert len(verify_bundle(bundle)) == len(man["files"])
    weights = bundle / "backbone" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.safetensors"):
        verify_bundle(bundle)
    assert vital(["bundle", "verify", str(bundle)]) == 2


def test_save_refuses_to_overwrite_and_leaves_no_temp(tiny_model, saved):
    with pytest.raises(BundleError, match="exists"):
        save_bundle(tiny_model, saved[0])
    assert not [p for p in saved[0].parent.iterdir() if p.name.startswith(".")]


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a VITAL bundle"):
        load_bundle(tmp_path)


def test_cli_info_and_init(saved, tmp_path, capsys):
    assert vital(["bundle", "info", str(saved[0])]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "vital-tiny" and info["scaffold"] is True
    assert vital(["bundle", "init", str(tmp_path / "fresh"), "--no-scaffold"]) == 0
    assert not (tmp_path / "fresh" / "scaffold.safetensors").exists()
    assert load_bundle(tmp_path / "fresh").config.preset == "tiny"
    assert vital(["bundle", "info", str(tmp_path / "nope")]) == 2


def test_projector_variant_round_trip(tiny_config, tmp_path):
    """A bundle trained with a §C.2 projector variant loads that variant back."""
    import copy

    from vital_core.model import build_model

    cfg = copy.deepcopy(tiny_config)
    cfg.heads.vp_variant = "mlp"
    model = build_model(cfg, lora=True, scaffold=True)
    save_bundle(model, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b", scaffold=True)
    assert type(loaded.scaffold.vp) is type(model.scaffold.vp)
    h = torch.randn(3, model.hidden_size)
    torch.testing.assert_close(loaded.scaffold.vp.eval()(h), model.scaffold.vp.eval()(h))
