"""Checkpoint converters into geomim-hf models (installed as ``geomim_hf.convert``).

    python -m geomim_hf.convert.convert_timm_swin --timm-model swin_base_patch4_window12_384 --output-dir OUT
    python -m geomim_hf.convert.convert_geomim_original --checkpoint geomim_base.pth --output-dir OUT
    python -m geomim_hf.convert.convert_mmdet3d_centerpoint --checkpoint centerpoint_02pillar_second_secfpn_*.pth --output-dir OUT
    python -m geomim_hf.convert.convert_bevfusion_lidar --checkpoint lidar-only-det.pth --output-dir OUT

Each writes a ``save_pretrained`` folder (safetensors + config) and ``conversion_report.json``: where
every source tensor went, what was initialised and why, what was left out and why. A checkpoint
that does not match the expected layout is refused, never converted in part silently.
"""
