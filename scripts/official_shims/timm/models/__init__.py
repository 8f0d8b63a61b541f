"""``timm.models.register_model``: the official code only decorates its model factories with it."""


def register_model(fn):
    return fn
