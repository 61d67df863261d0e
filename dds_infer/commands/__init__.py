"""Sub-commands of the ``dds-infer`` CLI (each module exposes ``register``)."""
