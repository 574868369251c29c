"""Config: YAML round trip, unknown keys rejected, type and value checks, presets."""

from __future__ import annotations

import pytest

from vital_core.config import ConfigError, VitalConfig
from vital_core.presets import preset, qwen3_vl_8b, tiny


@pytest.mark.parametrize("name", ["tiny", "qwen3-vl-8b"])
def test_preset_yaml_round_trip(tmp_path, name):
    cfg = preset(name)
    cfg.to_yaml(tmp_path / "c.yaml")
    assert VitalConfig.from_yaml(tmp_path / "c.yaml") == cfg


def test_unknown_keys_are_rejected_with_their_path(tmp_path):
    data = tiny().to_dict()
    data["lora"]["rank"] = 8
    with pytest.raises(ConfigError, match=r"lora: unknown key\(s\) rank"):
        VitalConfig.from_dict(data)
    data = tiny().to_dict()
    data["extra"] = 1
    with pytest.raises(ConfigError, match="unknown key"):
        VitalConfig.from_dict(data)


def test_wrong_types_and_values_are_rejected():
    data = tiny().to_dict()
    data["latent"]["k_max"] = "four"
    with pytest.raises(ConfigError, match="latent.k_max: expected int"):
        VitalConfig.from_dict(data)
    data = tiny().to_dict()
    data["latent"]["k_default"] = 9
    with pytest.raises(ConfigError, match="k_default <= k_max"):
        VitalConfig.from_dict(data)
    data = tiny().to_dict()
    data["backbone"]["dtype"] = "float64"
    with pytest.raises(ConfigError, match="backbone.dtype"):
        VitalConfig.from_dict(data)


def test_bad_yaml_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("lora: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        VitalConfig.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        VitalConfig.from_yaml(tmp_path / "list.yaml")


def test_paper_preset_sizes():
    cfg = qwen3_vl_8b()
    text = cfg.backbone.arch["text_config"]
    assert (text["hidden_size"], text["num_hidden_layers"], text["vocab_size"]) == (4096, 36, 151936)
    assert cfg.lora.r == 64 and cfg.lora.dropout == 0.05
    assert cfg.encoder.grid == 32 and cfg.encoder.hidden_size == 1152
    assert cfg.decoder.arch["hidden_size"] == 2048 and cfg.decoder.arch["num_hidden_layers"] == 28


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("qwen-99b")


def test_model_yaml_agrees_with_the_preset():
    """configs/model-qwen3-vl-8b.yaml and vital_core.presets.qwen3_vl_8b describe one model."""
    from pathlib import Path

    from vital_core.config import VitalConfig
    from vital_core.presets import qwen3_vl_8b

    yaml_cfg = VitalConfig.from_yaml(
        Path(__file__).parents[2] / "configs" / "model-qwen3-vl-8b.yaml"
    ).to_dict()
    preset = qwen3_vl_8b().to_dict()
    for part in ("backbone", "decoder", "encoder"):
        yaml_cfg[part].pop("path"), preset[part].pop("path")  # the YAML names local directories
    assert yaml_cfg == preset


def test_lists_of_dataclasses_are_built_and_checked():
    from training.recipe import PhaseSpec, Recipe, phases_for

    r = Recipe.from_dict({"curriculum": {"phases": [{"min_k": 1, "max_k": 1, "epochs": 2}, {"max_k": 3}]}})
    assert phases_for(r.curriculum) == [PhaseSpec(1, 1, 2.0), PhaseSpec(0, 3, 1.0)]
    with pytest.raises(ConfigError, match=r"curriculum.phases\[1\]: unknown key\(s\) maxk"):
        Recipe.from_dict({"curriculum": {"phases": [{"min_k": 1}, {"maxk": 3}]}})
    with pytest.raises(ConfigError, match="expected a list"):
        Recipe.from_dict({"curriculum": {"phases": {"min_k": 1}}})


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    from vital_core.config import deep_merge

    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert deep_merge(base, {"a": {"c": [3], "e": {"f": 1}}, "d": None}) == {
        "a": {"b": 1, "c": [3], "e": {"f": 1}},
        "d": None,
    }
