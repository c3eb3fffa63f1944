"""Running on GPU clusters: the DeepSpeed memory planner, config validation at a world size, launch."""
