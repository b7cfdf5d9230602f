"""tsa_core: the paper's math in torch, no I/O.

TSA / M-TSA loss (Eq. 6-10, 13), REPA (Eq. 2) and TRD baselines, motion maps and top-k
masks (Eq. 11-12), and the student -> teacher projector. See docs/math.md.
"""
from tsa.core.baselines import repa_loss, trd_loss
from tsa.core.correspondence import correspondence_probs, tsa_loss
from tsa.core.motion import mask_to_index, motion_map, topk_count, topk_mask
from tsa.core.projector import Projector

__all__ = ["tsa_loss", "trd_loss", "repa_loss", "motion_map", "topk_mask", "topk_count",
           "mask_to_index", "Projector", "correspondence_probs"]
