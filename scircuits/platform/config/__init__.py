"""Stage configs (``stages``), config files (``files``) and the click options generated from them
(``options``)."""

from scircuits.platform.config.circuit import CircuitConfig
from scircuits.platform.config.files import read_config_file
from scircuits.platform.config.stages import (
    AblateConfig,
    CollectConfig,
    RunConfig,
    StageConfig,
    TrainConfig,
)

__all__ = [
    "AblateConfig",
    "CircuitConfig",
    "CollectConfig",
    "RunConfig",
    "StageConfig",
    "TrainConfig",
    "read_config_file",
]
