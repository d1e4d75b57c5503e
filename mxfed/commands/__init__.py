"""Sub-commands of the ``mxfed`` CLI, one module per area."""
