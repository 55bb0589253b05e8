"""The memory side of comem: the k-step-off pipeline (pipeline.py) and the memory-model backends."""
