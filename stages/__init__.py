"""Built-in stages, one module each; importing this package registers them."""

from stages import (  # noqa: F401
    backtranslate,
    dedup,
    evol_instruct,
    judge,
    publish,
    rest_em,
    score,
    seeds,
    self_instruct,
    self_label,
    spin_pairs,
)
