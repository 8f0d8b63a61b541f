"""fastvar: fast next-scale visual autoregressive generation with FastVAR cached token pruning."""

from .errors import CheckpointError, FastVARError
from .outputs import GenerationOutput
from .pipeline import load_pipeline
from .pruning import PRESETS, PruningSchedule

__version__ = "0.1.0"
__all__ = ["load_pipeline", "PruningSchedule", "PRESETS", "GenerationOutput", "FastVARError", "CheckpointError"]
