"""Session script (2026-12-06, seventh); paths are this machine's: /work/S is the study's --out, OUT the scratch folder.
Shared helpers for the projection probes (inference only; package functions reused)."""
import os, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, "/work/main/examples")
from geomim_hf import GeoMIMForMaskedBEVModeling, GeoMIMImageProcessor
from geomim_hf.modeling_geomim import GeoMIMModelOutput
from geomim_hf.data import load_nuscenes, make_dataloader
from geomim_hf.teacher_cache import TeacherFeatureCache

ROOT, VERSION = "/work/S/nuscenes", "v1.0-trainval"
GEOMIM, PIXEL = "/work/S/pretrain/geomim-seed0", "/work/S/pretrain/pixel-seed0"
CACHE = "/work/S/teacher_features"
OUT = "/work/diag/probe_proj"
TEACHER_INPUTS = ("lidar_points", "ego_from_lidar", "point_mask")  # as examples/pretrain.py
SEED = 0        # masks: evaluate_pretraining's seed * 1_000_003 + batch index
BATCH = 2       # the pretraining batch size (mask index = batch index)
N_EVAL = 40     # keyframes of the held-out split, evenly spaced


def load_model(folder):
    return GeoMIMForMaskedBEVModeling.from_pretrained(folder).eval()


def eval_batches(model, split="train_detect", n=N_EVAL, online=False, use_cache=None):
    """Unaugmented batches of n evenly spaced keyframes, as examples/pretrain.py's HeldOut builds them."""
    rows = load_nuscenes(ROOT, VERSION, split, sweeps=0, classes=model.config.class_names)
    rows = rows.select(torch.linspace(0, len(rows) - 1, n).round().long().tolist())
    processor = GeoMIMImageProcessor.from_pretrained(GEOMIM)
    cache = TeacherFeatureCache(CACHE) if (not online if use_cache is None else use_cache) else None
    loader = make_dataloader(rows, processor, BATCH, return_depth=True, with_targets=False, teacher_features=cache,
                             input_names=model.model_input_names + (TEACHER_INPUTS if online else ()))
    return [b for b in loader], rows["sample_token"]


def tokens(f):
    """(B, N, C, h, w) -> (T, C)."""
    return f.permute(0, 1, 3, 4, 2).reshape(-1, f.shape[2])


class PCA:
    def __init__(self, x):  # x (T, C)
        x = x.double()
        self.mean = x.mean(0)
        c = x - self.mean
        values, vectors = torch.linalg.eigh(c.T @ c / len(c))
        self.values, self.vectors = values.flip(0).clamp(min=0), vectors.flip(1)

    def project(self, f, k):
        """Features (B, N, C, h, w) onto mean + top-k principal directions (k=None: all)."""
        B, N, C, h, w = f.shape
        x = tokens(f).double()
        v = self.vectors if k is None else self.vectors[:, :k]
        y = self.mean + ((x - self.mean) @ v) @ v.T
        return y.to(f.dtype).view(B, N, h, w, C).permute(0, 1, 4, 2, 3).contiguous()


class EncoderHook:
    """Forward hook on model.geomim: records the stage features the decoder reads, or replaces them by
    their projection (per stage: k or 'keep')."""

    def __init__(self, model):
        self.mode, self.record, self.pcas, self.ks = None, None, None, None
        model.geomim.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        if self.mode == "record":
            for s, f in enumerate(output.feature_maps):
                self.record[s].append(tokens(f).clone())
        elif self.mode == "project":
            maps = tuple(f if k == "keep" else self.pcas[s].project(f, k)
                         for s, (f, k) in enumerate(zip(output.feature_maps, self.ks)))
            return GeoMIMModelOutput(feature_maps=maps, hidden_states=output.hidden_states)
        return None

    def start_record(self):
        self.mode, self.record = "record", [[], []]

    def fit(self):
        self.pcas = [PCA(torch.cat(r)) for r in self.record]
        self.mode = None
        return self.pcas

    def set(self, ks):
        self.mode, self.ks = ("project", ks) if ks is not None else (None, None)


def spectrum_shares(pca, ks=(1, 2, 4, 8, 16)):
    total = float(pca.values.sum())
    return {k: float(pca.values[:k].sum()) / total for k in ks}


def effective_rank_of(x):
    from probe_encoder import effective_rank
    return effective_rank(x.double())
