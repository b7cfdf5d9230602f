"""VBench's Quality, Semantic and Total scores from its 16 text-to-video dimensions, computed as
VBench's own final-score script does (`scripts/cal_final_score.py` with `scripts/constant.py` of
VBench v0.1.5, github.com/Vchitect/VBench; the constants are unchanged up to its main branch of
2026-03): each dimension is normalised to (value - min) / (max - min) and weighted; Quality and
Semantic are the weighted means over their dimensions; Total = (4 Quality + 1 Semantic) / 5.

Dimension values are VBench's own (0-1; its evaluation results JSON holds them as
`{dimension: [value, per-video results]}`); the paper's tables show them x 100.
"""
from __future__ import annotations

import numpy as np

VBENCH_VERSION = "0.1.5"

# dimension: (normalisation min, max, weight), in VBench's order
DIMENSIONS = {
    "subject_consistency": (0.1462, 1.0, 1.0),
    "background_consistency": (0.2615, 1.0, 1.0),
    "temporal_flickering": (0.6293, 1.0, 1.0),
    "motion_smoothness": (0.706, 0.9975, 1.0),
    "dynamic_degree": (0.0, 1.0, 0.5),
    "aesthetic_quality": (0.0, 1.0, 1.0),
    "imaging_quality": (0.0, 1.0, 1.0),
    "object_class": (0.0, 1.0, 1.0),
    "multiple_objects": (0.0, 1.0, 1.0),
    "human_action": (0.0, 1.0, 1.0),
    "color": (0.0, 1.0, 1.0),
    "spatial_relationship": (0.0, 1.0, 1.0),
    "scene": (0.0, 0.8222, 1.0),
    "appearance_style": (0.0009, 0.2855, 1.0),
    "temporal_style": (0.0, 0.364, 1.0),
    "overall_consistency": (0.0, 0.364, 1.0),
}
QUALITY = ("subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
           "aesthetic_quality", "imaging_quality", "dynamic_degree")
SEMANTIC = ("object_class", "multiple_objects", "human_action", "color", "spatial_relationship", "scene",
            "appearance_style", "temporal_style", "overall_consistency")
QUALITY_WEIGHT, SEMANTIC_WEIGHT = 4.0, 1.0

# The paper's Table 3 columns: (a) Total, Quality and the quality dimensions (and object class),
# (b) Semantic and the other semantic dimensions.
TABLE_A = ("Total", "Quality", "subject_consistency", "background_consistency", "temporal_flickering",
           "motion_smoothness", "dynamic_degree", "aesthetic_quality", "imaging_quality", "object_class")
TABLE_B = ("Semantic", "multiple_objects", "human_action", "color", "spatial_relationship", "scene",
           "appearance_style", "temporal_style", "overall_consistency")
LABELS = {
    "subject_consistency": "Subject Consist.", "background_consistency": "Background Consist.",
    "temporal_flickering": "Temporal Flickering", "motion_smoothness": "Motion Smoothness",
    "dynamic_degree": "Dynamic Degree", "aesthetic_quality": "Aesthetic Quality",
    "imaging_quality": "Imaging Quality", "object_class": "Object Class", "multiple_objects": "Multiple Objects",
    "human_action": "Human Action", "color": "Color", "spatial_relationship": "Spatial Relationship",
    "scene": "Scene", "appearance_style": "Appearance Style", "temporal_style": "Temporal Style",
    "overall_consistency": "Overall Consistency", "Quality": "Quality Score", "Semantic": "Semantic Score",
    "Total": "Total Score",
}


def _group(values: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    total = sum((values[d] - DIMENSIONS[d][0]) / (DIMENSIONS[d][1] - DIMENSIONS[d][0]) * DIMENSIONS[d][2]
                for d in names)
    return total / sum(DIMENSIONS[d][2] for d in names)


def final_scores(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{Quality, Semantic, Total} (0-1, arrays of replicates) from dimension values (0-1);
    a group whose dimensions are not all given is left out (VBench's script would count a
    missing dimension as 0)."""
    out = {}
    if all(d in values for d in QUALITY):
        out["Quality"] = _group(values, QUALITY)
    if all(d in values for d in SEMANTIC):
        out["Semantic"] = _group(values, SEMANTIC)
    if "Quality" in out and "Semantic" in out:
        out["Total"] = ((out["Quality"] * QUALITY_WEIGHT + out["Semantic"] * SEMANTIC_WEIGHT)
                        / (QUALITY_WEIGHT + SEMANTIC_WEIGHT))
    return out
