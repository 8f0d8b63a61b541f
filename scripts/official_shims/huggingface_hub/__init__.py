"""``PyTorchModelHubMixin``: a base class of the official ``VARHF`` (hub upload/download; unused here)."""


class PyTorchModelHubMixin:
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__()
