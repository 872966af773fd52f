"""Held-out scores of masked BEV pretraining, beside what the images cannot tell.

Much of each pretraining target is predictable without looking at the images: the LiDAR teacher's BEV
features follow the sensor's range falloff and the usual road layout around the ego, and the depth seen
through a fixed camera's pixel follows the ground plane. :class:`ImageBlindBaseline` fits those
predictions on training samples and scores them with the model's own losses; a pretraining has read
something from the images only where its held-out loss goes below the baseline's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..modeling_geomim import DECODER_STRIDE, random_cell_mask
from ..training import move_batch

# The additive smoothing of the depth-bin counts (Jeffreys' prior): a bin never seen in training keeps a
# small probability, so one held-out pixel there does not dominate the baseline's BCE.
DEPTH_PSEUDO_COUNT = 0.5


class ImageBlindBaseline:
    """The predictions of a model that never looks at the pixels, fitted on unaugmented training samples
    with :meth:`update`:

    - reconstruction: per target position, the mean of the objective's target over the samples (the
      patch-normalised teacher features per BEV cell and channel for ``geomim``, the normalised pixels
      per view, token and value for ``pixel``);
    - depth: per view and feature cell, the frequency of each depth bin among the cells with a LiDAR
      depth (counts plus ``DEPTH_PSEUDO_COUNT``).

    ``model``: a :class:`~geomim_hf.GeoMIMForMaskedBEVModeling`, whose objective, targets and depth bins
    the baseline takes."""

    def __init__(self, model):
        self.model = model
        self.target_sum: torch.Tensor | None = None  # the targets' sum over samples
        self.samples = 0
        self.depth_counts: torch.Tensor | None = None  # (N, h, w, D)

    @torch.no_grad()
    def update(self, batch: dict) -> None:
        """Add a batch of the model's inputs (with ``teacher_features`` for ``geomim``, ``depth_labels``
        for the depth)."""
        target = self.model.reconstruction_target(batch["pixel_values"], batch.get("teacher_features"))
        if target is not None:
            total = target.sum(0)
            self.target_sum = total if self.target_sum is None else self.target_sum + total
            self.samples += target.shape[0]
        if batch.get("depth_labels") is not None and self.model.objective != "pixel":
            depth_bins = self.model.config.pretraining_depth_bins
            bins = depth_bins.index_of(batch["depth_labels"])  # (B, N, h, w), -1 without a depth
            counts = (F.one_hot(bins.clamp(min=0), depth_bins.count) * (bins >= 0)[..., None]).sum(0)
            self.depth_counts = counts if self.depth_counts is None else self.depth_counts + counts

    def reconstruction(self) -> torch.Tensor | None:
        """The mean target, shaped as one sample's (``(C_t, Y, X)`` or ``(N, h', w', P)``)."""
        return None if self.target_sum is None else self.target_sum / self.samples

    def depth_logits(self) -> torch.Tensor | None:
        """(N, D, h, w) log-frequencies of the depth bins: their softmax is the frequencies themselves."""
        if self.depth_counts is None:
            return None
        counts = self.depth_counts.double() + DEPTH_PSEUDO_COUNT
        return (counts / counts.sum(-1, keepdim=True)).log().float().permute(0, 3, 1, 2)


@torch.no_grad()
def evaluate_pretraining(model, loader, baseline: ImageBlindBaseline | None = None, seed: int = 0) -> dict:
    """Mean losses of the pretraining ``model`` over the batches of ``loader`` (held-out samples, without
    augmentation), each batch under masks drawn from ``seed`` and its index (the same at every call, so
    scores at different steps compare), and the ``baseline``'s losses on the same samples and masks.

    Returns ``loss`` (the objective's weighted sum, what pretraining minimises), ``reconstruction_loss`` and
    ``depth_loss`` (what the objective has), ``reconstruction_baseline`` and ``depth_baseline`` with a baseline,
    and ``samples``; losses are means over samples."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals: dict[str, float] = {}
    samples = 0

    def add(name: str, value: torch.Tensor | None, count: int) -> None:
        if value is not None:
            totals[name] = totals.get(name, 0.0) + float(value) * count

    prior = baseline.reconstruction() if baseline is not None else None
    prior_depth = baseline.depth_logits() if baseline is not None else None
    for index, batch in enumerate(loader):
        batch = move_batch(batch, device)
        mask = random_cell_mask(model.config, torch.Generator().manual_seed(seed * 1_000_003 + index))
        out = model(**batch, bool_masked_pos=mask)
        count = batch["pixel_values"].shape[0]
        add("loss", out.loss, count)
        add("reconstruction_loss", out.reconstruction_loss, count)
        add("depth_loss", out.depth_loss, count)
        if prior is not None and out.reconstruction_loss is not None:
            token_groups = model.geomim.encoder.token_groups(mask.long().to(device), DECODER_STRIDE)
            predicted = prior.to(device).expand(*out.reconstruction.shape)  # (B, G, *target's sample shape)
            add("reconstruction_baseline", model.reconstruction_loss(
                predicted, out.target, token_groups=token_groups, intrinsics=batch["intrinsics"],
                ego_from_camera=batch["ego_from_camera"], processed_from_original=batch["processed_from_original"],
                augmented_ego_from_ego=batch.get("augmented_ego_from_ego")), count)
        if prior_depth is not None and out.depth_loss is not None:
            add("depth_baseline", model.depth_loss(prior_depth.to(device).expand(*out.depth.shape),
                                                   batch["depth_labels"]), count)
        samples += count
    model.train(was_training)
    return {**{name: value / max(samples, 1) for name, value in totals.items()}, "samples": samples}
