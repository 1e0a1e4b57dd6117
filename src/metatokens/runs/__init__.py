"""Run folders and model folders: what a run writes, its lock and lifecycle, its checkpoints/ layout."""
