"""Small test helpers shared across test modules."""


class RunsCode:
    """A pickle that would create ``path`` when unpickled: what a malicious checkpoint does."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
