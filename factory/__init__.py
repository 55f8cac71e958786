"""The dataset factory: self-evolving LLM training data, from seeds to versioned releases."""

__version__ = "0.1.0"
