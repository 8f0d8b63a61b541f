"""Import-only stand-in: ``bsq_vae/flux_vqgan.py`` imports torchvision but inference never uses it."""
