"""Built-in stages, one module each, found by ``factory.stage.registered()`` (no list to keep here)."""
