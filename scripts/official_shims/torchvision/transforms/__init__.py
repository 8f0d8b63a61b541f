"""Import-only stand-in (``from torchvision import transforms`` in ``bsq_vae/flux_vqgan.py``)."""
