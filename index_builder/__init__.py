"""index_builder: the frozen medical vision encoder, adaptive ROI features, feature store, FAISS patch index, heatmaps."""

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
    build_patch_index,
    default_factory,
    merge_indexes,
)
from index_builder.heatmap import Heatmap, cosine_grid, heatmap, visual_queries
from index_builder.quality import QualityRow, choose, grid_search, sample_quality
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
from index_builder.samples import SampleError, SampleRef, load_image, load_mask, read_corpus, read_manifest
from index_builder.store import FeatureStore, StoreError, extract_to_store

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
    "sample_quality",
    "square_pad",
    "visual_queries",
]
