"""Finetune a GeoMIM encoder in the BEV map segmenter (BEVFusion's camera-only protocol) and score its mIoU.

    accelerate launch examples/finetune_segmentation.py --dataroot DIR --version v1.0-mini --train-split mini_train \
        --val-split mini_val --init OUT/geomim --output-dir OUT/segmenter --max-steps 2000

The detector's recipe and flags (``examples/finetune_detection.py``: EMA, layer decay, resume, model card), with
the segmenter's head and loss (:class:`~geomim_hf.modeling_geomim.GeoMIMForBEVSegmentation`: BEVFusion's six
map classes on 200 x 200 cells of 0.5 m, sigmoid focal loss) and the map masks of the nuScenes map expansion
(``maps/expansion/<location>.json``), drawn again at each augmented pose. Sampling is uniform (CBGS balances the
boxes' classes, which a map does not have). The final (EMA) segmenter is saved in ``OUT`` with
``OUT/metrics.json`` (per-class IoU and its threshold, mIoU: the best IoU over thresholds 0.35-0.65 counted over
the whole split) and its model card.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from finetune_detection import SEGMENTATION, main  # noqa: E402  (the sibling example script: one loop)

if __name__ == "__main__":
    main(task=SEGMENTATION, description=__doc__)
