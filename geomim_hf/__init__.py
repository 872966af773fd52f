"""geomim-hf: GeoMIM pretraining and BEV perception with a Hugging Face interface."""

__version__ = "0.1.0.dev0"
