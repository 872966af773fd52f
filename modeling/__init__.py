"""The GeoMIM networks in plain PyTorch (no transformers import), installed as ``geomim_hf.modeling``.

Configs, checkpoints, the Hub and datasets meet these modules in ``geomim_hf``; here lives only what
the networks compute.
"""
