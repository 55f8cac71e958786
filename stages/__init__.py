"""Built-in stages, one module each; importing this package registers them."""

from stages import dedup, judge, publish, score, seeds, self_instruct, self_label  # noqa: F401
