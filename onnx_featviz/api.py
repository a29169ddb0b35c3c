"""The public facade: everything users import, re-exported from the packages that implement it.

``api.Inspector`` is the core ``inspector.Inspector`` with the capability verbs attached
(``cam``, ``backprop``, ``stats``, ``cam_layer``, ``score_tensor``), each a one-line call into its
package, so notebooks keep one object per model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

import onnx_featviz.attribution.target_run as target_run
import onnx_featviz.audit.stats as audit_stats
import onnx_featviz.inspector as inspection
from onnx_featviz.attribution import layers as cam_layers
from onnx_featviz.attribution.detection import FORMATS as DETECTION_FORMATS
from onnx_featviz.attribution.detection import DetectionOptions
from onnx_featviz.attribution.output import cam_to_json, render_backprop, render_cam
from onnx_featviz.attribution.run import (
    BACKPROP_METHODS,
    CamOptions,
    CamReport,
    OcclusionOptions,
)
from onnx_featviz.attribution.seeds import TargetSpec
from onnx_featviz.audit.compare import CompareOptions, CompareResult, compare_models
from onnx_featviz.audit.output import (
    compare_to_json,
    format_compare,
    format_stats,
    save_compare,
    save_stats,
    stats_to_json,
)
from onnx_featviz.audit.plots import render_compare_plot, render_stats_plot
from onnx_featviz.audit.stats import StatsOptions, StatsResult, dataset_stats
from onnx_featviz.inspector import (
    STAGES,
    Batch,
    Images,
    ModelSource,
    PrepOptions,
    expand_images,
    load_model,
    read_labels,
)
from onnx_featviz.io.batches import ImageSource, plan_groups
from onnx_featviz.io.data import open_data
from onnx_featviz.io.outputs import Picture, Rendered, manifest, save_pictures
from onnx_featviz.render.text import format_predictions, format_summary, predictions_to_json
from onnx_featviz.reporting import ReportOptions, build_report, save_report
from onnx_featviz.structs import ChannelStats, ProgressFn, auto_progress
from onnx_featviz.synthesis.pictures import render_inversions, render_maximized
from onnx_featviz.synthesis.run import (
    InvertOptions,
    InvertResult,
    MaximizeOptions,
    MaximizeResult,
    invert,
    maximize,
)
from onnx_featviz.views.model import (
    build_conv,
    compute_activations,
    describe,
    inspect_model,
    predict,
    read_model_filters,
)
from onnx_featviz.views.pictures import (
    FilterRenderOptions,
    MapRenderOptions,
    render_feature_maps,
    render_model_filters,
)


class Inspector(inspection.Inspector):
    """``inspector.Inspector`` plus the capability verbs (see the module docstring)."""

    def cam(self, images: Images, options: CamOptions, *,
            progress: ProgressFn | None = auto_progress) -> CamReport:
        """Return class-activation maps for any target (``attribution.target_run.cam``)."""
        return target_run.cam(self, images, options, progress=progress)

    def backprop(self, images: Images, method: str, target: int | str | None = None, *,
                 score: str | int | None = None,
                 goal: TargetSpec | None = None,
                 layer: str | int | None = None) -> NDArray[np.float32]:
        """Return input-space gradient views (``attribution.target_run.backprop``)."""
        return target_run.backprop(self, images, method, target, score=score, goal=goal,
                                   layer=layer)

    def cam_layer(self, layer: str | int | None = None) -> str:
        """Return the tensor a CAM uses (``attribution.run.cam_layer``)."""
        return cam_layers.cam_layer(self, layer)

    def score_tensor(self, score: str | int | None = None) -> str:
        """Return the tensor CAM targets are scored on (``attribution.run.score_tensor``)."""
        return cam_layers.score_tensor(self, score)

    def stats(self, images: Images, layers: Sequence[str | int] | None = None, *,
              stage: str = "conv") -> dict[str, ChannelStats]:
        """Return per-channel statistics over the inputs (``audit.stats.image_stats``)."""
        return audit_stats.image_stats(self, images, layers, stage=stage)


__all__ = [
    "CompareOptions", "CompareResult", "InvertOptions", "InvertResult", "MaximizeOptions",
    "MaximizeResult", "StatsOptions", "StatsResult", "compare_models", "compare_to_json",
    "dataset_stats", "format_compare", "format_stats", "invert", "maximize", "open_data",
    "render_compare_plot", "render_inversions", "render_maximized", "render_stats_plot",
    "save_compare", "save_stats", "stats_to_json",
    "DETECTION_FORMATS", "DetectionOptions", "TargetSpec",
    "BACKPROP_METHODS", "STAGES", "Batch", "CamOptions", "CamReport", "FilterRenderOptions",
    "ImageSource", "Images", "Inspector", "MapRenderOptions", "ModelSource", "OcclusionOptions",
    "Picture", "PrepOptions", "Rendered", "build_conv", "cam_to_json", "compute_activations",
    "describe", "expand_images", "format_predictions", "format_summary", "inspect_model",
    "load_model", "plan_groups", "predict", "predictions_to_json", "read_labels",
    "read_model_filters", "render_backprop", "render_cam", "render_feature_maps",
    "manifest", "render_model_filters", "save_pictures",
    "ReportOptions", "build_report", "save_report",
]
