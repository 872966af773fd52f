"""Small test helpers shared across test modules."""


class RunsCode:
    """A pickle that would create ``path`` when unpickled: what a malicious checkpoint does."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def assert_same_weights(expected, actual) -> None:
    """Two modules hold bit-identical tensors under the same names."""
    import torch

    expected_state, actual_state = expected.state_dict(), actual.state_dict()
    assert list(expected_state) == list(actual_state)
    for name, tensor in expected_state.items():
        assert torch.equal(tensor, actual_state[name]), name


def devices() -> list[str]:
    """The devices a test runs on: the CPU always, CUDA where there is one."""
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def skip_unless_kernel_runs(backend: str, device: str) -> None:
    """Triton runs on CUDA tensors, or on CPU tensors under its interpreter (conftest sets
    TRITON_INTERPRET=1 only where there is no GPU: the variable is read when a kernel is defined)."""
    import os

    import pytest

    if backend == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("triton on CPU tensors needs TRITON_INTERPRET=1 (set by conftest on machines without a GPU)")


def full_float32():
    """A context without TF32 (cuDNN convolutions use it by default): it rounds inputs to 10 mantissa
    bits, which turns float32 summation-order differences (1e-7) into 1e-3 differences downstream."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def context():
        matmul = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul

    return context()


def load_example(name: str):
    """``examples/<name>.py`` imported as module ``name`` (registered first: dataclasses look their module up)."""
    import importlib.util
    import pathlib
    import sys

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def hub_cache(root, folder, repo_id: str = "org/geomim-tiny") -> str:
    """Put the files of ``folder`` in a Hub cache at ``root`` (``models--org--name/snapshots/<revision>``, ``refs/main``)
    as ``repo_id``, the layout ``from_pretrained`` reads with ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE=root``."""
    import os
    import pathlib

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = pathlib.Path(root) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in os.listdir(folder):
        if os.path.isfile(os.path.join(folder, name)):
            (snapshot / name).write_bytes(pathlib.Path(folder, name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return str(root)
