from .fastvar import PRESETS, FastVARPruner, PruningSchedule, resolve_pruning, select_pivotal_tokens

__all__ = ["PRESETS", "FastVARPruner", "PruningSchedule", "resolve_pruning", "select_pivotal_tokens"]
