"""Training on releases: ``factory train`` (SFT or DPO with TRL, full or LoRA) and the ``models`` table.

Separate from the factory's internals on purpose: a job reads only a release (a folder, or its Hub repo
at a tag, checked against its manifest) and a base model, so it runs the same on any machine.

- ``config``: the pydantic ``TrainConfig`` (YAML or CLI flags);
- ``data``: finding and verifying the release, rows as TRL conversations;
- ``trainer``: the run itself (checkpoints, resume, atomic output, ``training.json``);
- ``registry``: the ``models`` catalog table and model names for ``backend.model``.
"""
