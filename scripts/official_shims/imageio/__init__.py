"""Import-only stand-in: ``bsq_vae/flux_vqgan.py`` imports imageio but inference never uses it."""
