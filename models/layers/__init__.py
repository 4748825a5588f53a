"""The layer registry (models.layers.builtin.LAYERS) with every built-in layer registered: the course's
(builtin) and those of later architectures (modern)."""
from models.layers import builtin, modern  # noqa: F401  (modern registers into builtin's table on import)
