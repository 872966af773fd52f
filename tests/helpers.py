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
