"""The one `Config` tree that reaches every stage: its sections (`schema`), reading YAML files and
overrides onto it (`loading`), the checks of ranges and of fields against each other (`checks`),
and the `config show` listing (`show`)."""

from dgseg.pipeline.config.checks import ConfigError, ConfigWarning, Interval
from dgseg.pipeline.config.loading import (
    ResolvedConfig,
    config_path,
    from_dict,
    load_config,
    resolve_config,
    save_config,
    shipped_configs,
    to_dict,
)
from dgseg.pipeline.config.schema import (
    Config,
    ControllerConfig,
    DataConfig,
    DepthFusionConfig,
    EvalConfig,
    ModelConfig,
    SemiConfig,
    TrainConfig,
)
from dgseg.pipeline.config.show import format_config

__all__ = [
    "Config", "ConfigError", "ConfigWarning", "ControllerConfig", "DataConfig", "DepthFusionConfig", "EvalConfig",
    "Interval", "ModelConfig", "ResolvedConfig", "SemiConfig", "TrainConfig", "config_path", "format_config",
    "from_dict", "load_config", "resolve_config", "save_config", "shipped_configs", "to_dict",
]  # fmt: skip
