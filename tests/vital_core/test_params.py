"""Parameter counts at the paper's sizes, computed on the meta device (nothing allocated)."""

from __future__ import annotations

from vital_core.lora import count_parameters
from vital_core.presets import qwen3_vl_8b


def test_paper_parameter_counts():
    counts = count_parameters(qwen3_vl_8b())
    assert round(counts["lora"] / 1e6, 1) == 174.6  # rank 64 on q,k,v,o,gate,up,down × 36 layers
    assert counts["lora"] == 64 * 36 * (8192 + 5120 + 5120 + 8192 + 16384 + 16384 + 16384)
    assert round(counts["visual_projector"] / 1e6, 2) == 21.51
    assert round(counts["pj_in"] / 1e6, 2) == 8.39
    # 36 layers of (q,k,v,o + gate,up,down) + norms, plus the 151,936 × 4096 embedding
    per_layer = 4096 * (4096 + 1024 + 1024) + 4096 * 4096 + 3 * 4096 * 12288 + 2 * 4096 + 2 * 128
    assert counts["backbone_language_model"] == 36 * per_layer + 151936 * 4096 + 4096
