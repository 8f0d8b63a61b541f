"""Stand-in for ``timm`` (see ../README.md): only the names the official Infinity code imports."""
