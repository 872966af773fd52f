"""CenterPoint: a BEV detection head, its training targets, loss and decoding.

Boxes are ego-frame ``(x, y, z, l, w, h, yaw)`` with ``z`` at the centre; BEV maps are (B, C, Y, X)
with cell ``[iy, ix]`` covering ``x_min + ix * res`` and likewise for y. The head predicts, per
cell: a heatmap per class, the centre's sub-cell offset (2), its height (1), log size (3), yaw as
(sin, cos) (2), velocity (2) and optionally attribute logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .grids import BevGrid

REGRESSION_SLICES = {"offset": slice(0, 2), "height": slice(2, 3), "size": slice(3, 6), "rotation": slice(6, 8),
                     "velocity": slice(8, 10)}
REGRESSION_CHANNELS = 10
# CenterPoint's nuScenes code weights: velocity counts a fifth.
CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)
HEATMAP_PRIOR_BIAS = -2.19  # sigmoid(-2.19) = 0.1


def transform_boxes(target_from_source: torch.Tensor, boxes: torch.Tensor, velocities: torch.Tensor | None = None):
    """Boxes ``(x, y, z, l, w, h, yaw)`` (B, K, 7), z at the centre, and velocities (B, K, 2) from the
    source frame to the target frame, ``target_from_source`` (B, 4, 4). The centre moves rigidly, the
    yaw is the heading direction's after rotation, velocities rotate (NaN stays NaN). Returns
    (boxes (B, K, 7), velocities (B, K, 2) or None)."""
    rotation, translation = target_from_source[:, None, :3, :3], target_from_source[:, None, :3, 3]
    centers = (rotation @ boxes[..., :3, None]).squeeze(-1) + translation
    yaw = boxes[..., 6]
    heading = torch.stack([torch.cos(yaw), torch.sin(yaw), torch.zeros_like(yaw)], -1)
    heading = (rotation @ heading[..., None]).squeeze(-1)
    moved = torch.cat([centers, boxes[..., 3:6], torch.atan2(heading[..., 1], heading[..., 0])[..., None]], -1)
    if velocities is None:
        return moved, None
    velocities_3d = torch.cat([velocities, torch.zeros_like(velocities[..., :1])], -1)
    return moved, (rotation @ velocities_3d[..., None]).squeeze(-1)[..., :2]


class CenterHead(nn.Module):
    """Shared 3x3 conv, then a heatmap branch (num_classes) and regression branches.

    By default one task covers every class, with one 10-channel regression branch. ``task_classes``
    splits the classes into task groups as mmdetection3d's nuScenes CenterPoint does: each task has its
    own heatmap branch over its classes and, like mmdetection3d's ``SeparateHead``, one branch per
    regression quantity (``REGRESSION_SLICES``: offset, height, size, rotation, velocity).

    Args:
        in_channels, num_classes, head_channels: widths.
        num_attributes: attribute logits per cell (one task only).
        task_classes: class ids per task; together exactly ``range(num_classes)``.
        final_kernel: kernel of each branch's output conv (mmdetection3d: 3; its other convs are 3x3).
    """

    def __init__(self, in_channels: int, num_classes: int, head_channels: int = 64, num_attributes: int = 0,
                 task_classes: Sequence[Sequence[int]] | None = None, final_kernel: int = 1):
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(in_channels, head_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(head_channels), nn.ReLU(True))

        def branch(out_channels, bias_init=0.0):
            return nn.Sequential(nn.Conv2d(head_channels, head_channels, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(head_channels), nn.ReLU(True),
                                 OutputConv2d(head_channels, out_channels, final_kernel, bias_init=bias_init))

        self.task_classes = None
        if task_classes is None:
            self.heatmap = branch(num_classes, HEATMAP_PRIOR_BIAS)
            self.regression = branch(REGRESSION_CHANNELS)
            self.attributes = branch(num_attributes) if num_attributes else None
            return
        self.task_classes = [list(map(int, classes)) for classes in task_classes]
        flat = [c for classes in self.task_classes for c in classes]
        if sorted(flat) != list(range(num_classes)):
            raise ValueError(f"task_classes {self.task_classes} must hold every class id of range({num_classes}) "
                             "exactly once")
        if num_attributes:
            raise ValueError("attributes need the one-task head (task_classes=None)")
        self.attributes = None
        self.tasks = nn.ModuleList()
        for classes in self.task_classes:
            self.tasks.append(nn.ModuleDict({
                "heatmap": branch(len(classes), HEATMAP_PRIOR_BIAS),
                "regression": nn.ModuleDict({name: branch(part.stop - part.start)
                                             for name, part in REGRESSION_SLICES.items()})}))
        # Heatmap channels come task-major; class c sits at channel class_channel[c]; its task is class_task[c].
        self.class_channel = [flat.index(c) for c in range(num_classes)]
        self.class_task = [next(t for t, classes in enumerate(self.task_classes) if c in classes)
                           for c in range(num_classes)]

    def forward(self, bev: torch.Tensor) -> dict[str, torch.Tensor]:
        """bev: (B, C, Y, X). Returns heatmap logits (B, K, Y, X), regression (B, 10, Y, X) and, with
        attributes, attribute logits (B, A, Y, X). With task groups the regression is per class,
        (B, K, 10, Y, X): class k reads its task's maps, so a peak of class k decodes with them."""
        shared = self.shared(bev)
        if self.task_classes is None:
            out = {"heatmap": self.heatmap(shared), "regression": self.regression(shared)}
            if self.attributes is not None:
                out["attributes"] = self.attributes(shared)
            return out
        heatmaps, regressions = [], []
        for task in self.tasks:
            heatmaps.append(task["heatmap"](shared))
            regressions.append(torch.cat([task["regression"][name](shared) for name in REGRESSION_SLICES], 1))
        return {"heatmap": torch.cat(heatmaps, 1)[:, self.class_channel],
                "regression": torch.stack(regressions, 1)[:, self.class_task]}


class OutputConv2d(nn.Conv2d):
    """A prediction layer (heatmap, regression, attribute, depth or map logits). It starts as
    :meth:`reset_output` says, which the models' initialisers call again (they find it by type), and it runs
    in float32 under autocast: bf16 keeps 8 significant bits, so heatmap logits near their prior (-2.2) would
    step by 0.016 and tie neighbouring peaks, and box offsets would lose centimetres."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, bias_init: float = 0.0):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.bias_init = bias_init
        self.reset_output()

    def reset_output(self) -> None:
        """CenterNet's (and RetinaNet's) start for an output conv: small weights and ``bias_init`` (the
        heatmap's sits at probability 0.1 for every class and cell), so the losses start sane: a ReLU-gain
        init here starts the regressions at a few metres off (L1 ~14) and the gradients spiking."""
        nn.init.normal_(self.weight, std=0.01)
        nn.init.constant_(self.bias, self.bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def gaussian_radius(length_cells: torch.Tensor, width_cells: torch.Tensor, min_overlap: float = 0.1) -> torch.Tensor:
    """CenterNet's radius: the largest centre shift that keeps ``min_overlap`` IoU, in cells."""
    height, width = length_cells, width_cells
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def build_targets(boxes: torch.Tensor, velocities: torch.Tensor, labels: torch.Tensor, box_mask: torch.Tensor,
                  grid: BevGrid, num_classes: int, attributes: torch.Tensor | None = None, min_radius: int = 2):
    """CenterPoint targets on ``grid``.

    boxes (B, K, 7), velocities (B, K, 2) (NaN: unknown, not supervised), labels (B, K),
    box_mask (B, K). Returns heatmap (B, C, Y, X) in [0, 1]; and per object: ``index`` (B, K) flat
    cell, ``labels`` (B, K) its class (0 where not supervised), ``regression`` (B, K, 10) targets,
    ``weights`` (B, K, 10) (0 for padding, objects off the grid and unknown velocities),
    ``attributes`` (B, K) (-1: none).
    """
    batch, objects = labels.shape
    height, width = grid.size
    device = boxes.device
    heatmap = torch.zeros(batch, num_classes, height, width, device=device)
    x = (boxes[..., 0] - grid.x_range[0]) / grid.resolution  # continuous cell coordinates
    y = (boxes[..., 1] - grid.y_range[0]) / grid.resolution
    column, row = torch.floor(x).long(), torch.floor(y).long()
    inside = box_mask & (column >= 0) & (column < width) & (row >= 0) & (row < height) & (labels >= 0)
    radius = gaussian_radius(boxes[..., 3] / grid.resolution, boxes[..., 4] / grid.resolution)
    radius = torch.clamp(torch.floor(radius), min=min_radius).long()
    for b, k in torch.nonzero(inside).tolist():  # objects are few; the Gaussians are small
        r = int(radius[b, k])
        rows = torch.arange(max(int(row[b, k]) - r, 0), min(int(row[b, k]) + r + 1, height), device=device)
        columns = torch.arange(max(int(column[b, k]) - r, 0), min(int(column[b, k]) + r + 1, width), device=device)
        sigma = (2 * r + 1) / 6
        gaussian = torch.exp(-((rows[:, None] - row[b, k]) ** 2 + (columns[None, :] - column[b, k]) ** 2)
                             / (2 * sigma**2))
        patch = heatmap[b, labels[b, k], rows[0]: rows[-1] + 1, columns[0]: columns[-1] + 1]
        torch.maximum(patch, gaussian, out=patch)

    regression = torch.cat([
        torch.stack([x - column, y - row], -1),  # offset of the centre within its cell
        boxes[..., 2:3],
        torch.log(boxes[..., 3:6].clamp(min=1e-3)),
        torch.stack([torch.sin(boxes[..., 6]), torch.cos(boxes[..., 6])], -1),
        torch.nan_to_num(velocities, nan=0.0),
    ], -1)
    weights = inside[..., None].float() * torch.tensor(CODE_WEIGHTS, device=device)
    weights[..., 8:10] *= torch.isfinite(velocities).all(-1, keepdim=True).float()
    index = torch.where(inside, row * width + column, torch.zeros_like(row))
    target_attributes = None
    if attributes is not None:
        target_attributes = torch.where(inside, attributes, torch.full_like(attributes, -1))
    return {"heatmap": heatmap, "index": index, "labels": torch.where(inside, labels, torch.zeros_like(labels)),
            "regression": regression, "weights": weights, "attributes": target_attributes,
            "num_objects": inside.sum()}


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed and normalised by the number of peaks."""
    probability = logits.float().sigmoid().clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    positive_loss = -torch.log(probability) * (1 - probability) ** alpha * positive
    negative_loss = -torch.log(1 - probability) * probability**alpha * (1 - target) ** beta * (1 - positive)
    return (positive_loss.sum() + negative_loss.sum()) / positive.sum().clamp(min=1.0)


def gather_regression(regression: torch.Tensor, cells: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The regression at flat ``cells`` (B, N) for objects of class ``labels`` (B, N): from (B, 10, Y, X)
    maps shared by all classes, or per-class (B, K, 10, Y, X) maps (task-group heads). Returns (B, N, 10)."""
    regression = regression.float()
    if regression.dim() == 4:
        return regression.flatten(2).gather(2, cells[:, None, :].expand(-1, regression.shape[1], -1)).transpose(1, 2)
    batch, classes, channels, height, width = regression.shape
    per_class = regression.permute(0, 1, 3, 4, 2).reshape(batch, classes * height * width, channels)
    return per_class.gather(1, (labels * height * width + cells)[..., None].expand(-1, -1, channels))


def center_loss(outputs: dict, targets: dict, regression_weight: float = 0.25) -> dict[str, torch.Tensor]:
    """Focal heatmap loss, L1 regression at the objects' cells (from their class's maps where the head
    has task groups), attribute cross-entropy; each normalised by the number of objects. Returns the
    terms and their sum under ``loss``."""
    heatmap = focal_loss(outputs["heatmap"], targets["heatmap"])
    gathered = gather_regression(outputs["regression"], targets["index"], targets["labels"])  # (B, K, 10)
    objects = targets["num_objects"].clamp(min=1).float()
    regression = (F.l1_loss(gathered, targets["regression"], reduction="none") * targets["weights"]).sum() / objects
    terms = {"heatmap_loss": heatmap, "regression_loss": regression}
    loss = heatmap + regression_weight * regression
    if "attributes" in outputs and targets["attributes"] is not None:
        logits = outputs["attributes"].float().flatten(2).gather(
            2, targets["index"][:, None, :].expand(-1, outputs["attributes"].shape[1], -1)).transpose(1, 2)
        valid = targets["attributes"] >= 0
        attribute = F.cross_entropy(logits[valid], targets["attributes"][valid], reduction="sum") / objects \
            if valid.any() else logits.sum() * 0
        terms["attribute_loss"] = attribute
        loss = loss + 0.2 * attribute
    terms["loss"] = loss
    return terms


def circle_nms(centers: torch.Tensor, scores: torch.Tensor, radius: float) -> torch.Tensor:
    """Indices kept by greedy non-maximum suppression with centre distance below ``radius`` (metres)
    as overlap, highest score first. centers: (P, 2)."""
    order = torch.argsort(scores, descending=True)
    distances = torch.cdist(centers[order].float(), centers[order].float())
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=centers.device)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        suppressed |= distances[i] < radius
    return torch.stack(keep) if keep else order[:0]


def decode(outputs: dict, grid: BevGrid, top_k: int = 500, score_threshold: float = 0.1,
           nms_radius: dict[int, float] | float | None = None) -> list[dict[str, torch.Tensor]]:
    """Boxes from the head: sigmoid heatmap, 3x3 max-pool peak picking, top-k over classes and cells,
    score threshold, then per-class circle NMS (``nms_radius`` in metres per class id, or one value;
    None skips it). The regression is (B, 10, Y, X), or (B, K, 10, Y, X) per class. Returns per sample
    ``boxes`` (P, 7), ``scores``, ``labels``, ``velocities`` (P, 2) and, with attributes, ``attributes`` (P,)."""
    heatmap = outputs["heatmap"].float().sigmoid()
    peaks = heatmap == F.max_pool2d(heatmap, 3, stride=1, padding=1)
    heatmap = heatmap * peaks
    batch, classes, height, width = heatmap.shape
    scores, flat = heatmap.flatten(1).topk(min(top_k, classes * height * width), dim=1)
    labels, cells = flat // (height * width), flat % (height * width)
    rows, columns = cells // width, cells % width
    regression = gather_regression(outputs["regression"], cells, labels)  # (B, top_k, 10)
    x = (columns + regression[..., 0]) * grid.resolution + grid.x_range[0]
    y = (rows + regression[..., 1]) * grid.resolution + grid.y_range[0]
    size = regression[..., 3:6].clamp(max=5.0).exp()
    yaw = torch.atan2(regression[..., 6], regression[..., 7])
    boxes = torch.cat([x[..., None], y[..., None], regression[..., 2:3], size, yaw[..., None]], -1)
    attributes = None
    if "attributes" in outputs:
        attribute_logits = outputs["attributes"].float().flatten(2)
        attributes = attribute_logits.gather(2, cells[:, None].expand(-1, attribute_logits.shape[1], -1)).argmax(1)
    results = []
    for b in range(batch):
        keep = scores[b] >= score_threshold
        if nms_radius is not None:
            kept = []
            for label in labels[b][keep].unique():
                candidates = torch.nonzero(keep & (labels[b] == label)).squeeze(1)
                radius = nms_radius.get(int(label), 0.0) if isinstance(nms_radius, dict) else nms_radius
                if radius > 0:
                    candidates = candidates[circle_nms(boxes[b, candidates, :2], scores[b, candidates], radius)]
                kept.append(candidates)
            chosen = torch.cat(kept) if kept else torch.nonzero(keep).squeeze(1)
            chosen = chosen[torch.argsort(scores[b, chosen], descending=True)]
        else:
            chosen = torch.nonzero(keep).squeeze(1)
        result = {"boxes": boxes[b, chosen], "scores": scores[b, chosen], "labels": labels[b, chosen],
                  "velocities": regression[b, chosen, 8:10]}
        if attributes is not None:
            result["attributes"] = attributes[b, chosen]
        results.append(result)
    return results
