"""index_builder: the frozen medical vision encoder, adaptive ROI features, feature store, FAISS patch index, heatmaps
and the regions (mask + box on the original image) read from them.

Public names load on first use (PEP 562): `vital --help` and the CLI registration do not import
torch or faiss.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "EncoderError": "index_builder.encoder",
    "PatchEncoder": "index_builder.encoder",
    "load_bundle_encoder": "index_builder.encoder",
    "load_encoder": "index_builder.encoder",
    "model_view": "index_builder.encoder",
    "preprocess": "index_builder.encoder",
    "square_pad": "index_builder.encoder",
    "IndexBuilder": "index_builder.faiss_index",
    "IndexError_": "index_builder.faiss_index",
    "PatchHit": "index_builder.faiss_index",
    "PatchIndex": "index_builder.faiss_index",
    "build_patch_index": "index_builder.index_build",
    "default_factory": "index_builder.faiss_index",
    "merge_indexes": "index_builder.faiss_index",
    "Heatmap": "index_builder.heatmap",
    "cosine_grid": "index_builder.heatmap",
    "heatmap": "index_builder.heatmap",
    "visual_queries": "index_builder.heatmap",
    "Region": "index_builder.regions",
    "RegionError": "index_builder.regions",
    "region_from_grid": "index_builder.regions",
    "QualityRow": "index_builder.quality",
    "choose": "index_builder.quality",
    "grid_search": "index_builder.quality",
    "sample_quality": "index_builder.quality",
    "ROIError": "index_builder.roi",
    "ROIParams": "index_builder.roi",
    "ROIPlan": "index_builder.roi",
    "ROIResult": "index_builder.roi",
    "extract_roi": "index_builder.roi",
    "extract_rois": "index_builder.roi",
    "plan_roi": "index_builder.roi",
    "pool_roi": "index_builder.roi",
    "SampleError": "index_builder.samples",
    "SampleRef": "index_builder.samples",
    "load_image": "index_builder.samples",
    "load_mask": "index_builder.samples",
    "read_corpus": "index_builder.samples",
    "read_manifest": "index_builder.samples",
    "FeatureStore": "index_builder.store",
    "StoreError": "index_builder.store",
    "extract_to_store": "index_builder.store",
}

if TYPE_CHECKING:
    from index_builder.encoder import (
        EncoderError,
        PatchEncoder,
        load_bundle_encoder,
        load_encoder,
        model_view,
        preprocess,
        square_pad,
    )
    from index_builder.faiss_index import (
        IndexBuilder,
        IndexError_,
        PatchHit,
        PatchIndex,
        default_factory,
        merge_indexes,
    )
    from index_builder.heatmap import Heatmap, cosine_grid, heatmap, visual_queries
    from index_builder.index_build import build_patch_index
    from index_builder.quality import QualityRow, choose, grid_search, sample_quality
    from index_builder.regions import Region, RegionError, region_from_grid
    from index_builder.roi import (
        ROIError,
        ROIParams,
        ROIPlan,
        ROIResult,
        extract_roi,
        extract_rois,
        plan_roi,
        pool_roi,
    )
    from index_builder.samples import (
        SampleError,
        SampleRef,
        load_image,
        load_mask,
        read_corpus,
        read_manifest,
    )
    from index_builder.store import FeatureStore, StoreError, extract_to_store


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'index_builder' has no attribute {name!r}")


__all__ = [
    "EncoderError",
    "FeatureStore",
    "Heatmap",
    "IndexBuilder",
    "IndexError_",
    "PatchEncoder",
    "PatchHit",
    "PatchIndex",
    "QualityRow",
    "ROIError",
    "ROIParams",
    "ROIPlan",
    "ROIResult",
    "Region",
    "RegionError",
    "SampleError",
    "SampleRef",
    "StoreError",
    "build_patch_index",
    "choose",
    "cosine_grid",
    "default_factory",
    "extract_roi",
    "extract_rois",
    "extract_to_store",
    "grid_search",
    "heatmap",
    "load_bundle_encoder",
    "load_encoder",
    "load_image",
    "load_mask",
    "merge_indexes",
    "model_view",
    "plan_roi",
    "pool_roi",
    "preprocess",
    "read_corpus",
    "read_manifest",
    "region_from_grid",
    "sample_quality",
    "square_pad",
    "visual_queries",
]
