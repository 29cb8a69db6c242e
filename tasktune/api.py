"""The public Python API: each function is one pipeline stage, as the CLI runs it.

    import tasktune
    tasktune.generate_data("grid", "data/grid", seed=42)
    tasktune.train(model="models/tiny-glm", data="data/grid", out="runs/grid", max_steps=100)
    metrics = tasktune.evaluate("runs/grid")
    bot = tasktune.Assistant.from_run("runs/grid")
    bot.answer(["您好,请简单自我介绍一下"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasktune.tuning.config import checked_arguments  # every bool and path parameter below, by its annotation


@checked_arguments
def builtin_specs() -> dict[str, Path]:
    """The task specs shipped with tasktune, by name (`grid`, `smarthome`, ...) -> spec file."""
    from tasktune.datagen.spec import builtin_specs as specs

    return specs()


@checked_arguments
def generate_data(spec: str | Path, out: str | Path, *, seed: int | None = None, n: int | None = None,
                  fmt: str = "chatglm", meta: bool = True) -> list[Path]:
    """Generate train/dev data from `spec` (a YAML path or a built-in spec's name) into the folder `out`, as
    `tasktune data` does; returns the files written. `seed` defaults to the spec's own."""
    from tasktune.datagen import generate, load_spec, write_splits
    from tasktune.errors import SpecError
    from tasktune.flags import COUNT, SEED

    SEED.check("seed", seed, optional=True)  # as `--seed`: a NaN seed gave other data on every call
    COUNT.check("n", n, optional=True)
    loaded = load_spec(spec)
    seed = seed if seed is not None else loaded.seed
    if seed is None:
        raise SpecError(f"{loaded.path}: the spec sets no seed; pass seed=")
    return write_splits(generate(loaded, seed=seed, n=n), out, fmt, meta=meta)


@checked_arguments
def train(config=None, **fields: Any):
    """Train a run as `tasktune train` does. Pass a `TrainConfig`, or its fields as keywords
    (`model=`, `data=`, `out=`, `max_steps=`, ...). Returns the `FitResult`."""
    import dataclasses

    from tasktune.tuning.config import TrainConfig, check_method_settings
    from tasktune.tuning.training.train import fit

    _known_keywords("train", fields, TrainConfig)
    if config is None:
        config, given = TrainConfig(**fields), set(fields)
    elif not isinstance(config, TrainConfig):  # a dict failed deep inside with "'dict' object has no attribute"
        from tasktune.errors import ConfigError

        raise ConfigError(f"train(config): expected a TrainConfig (or its fields as keywords), got "
                          f"{type(config).__name__}")
    else:  # a TrainConfig's settings away from their defaults were given, as are the keywords
        defaults = TrainConfig(out=config.out)
        given = {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(defaults, f.name)}
        if fields:
            config, given = dataclasses.replace(config, **fields), given | set(fields)
    check_method_settings(config, given)  # as the CLI: lora_r for --method prefix was ignored
    return fit(config)


@checked_arguments
def evaluate(run_dir: str | Path, *, log=print, **options: Any) -> dict[str, Any]:
    """Answer the dev split with the base and the tuned model, write RUN/eval/ and return the metrics
    (`{"base": ..., "tuned": ..., "info": ..., "paths": ...}`). `options`: EvalConfig fields (limit=, split=...)."""
    from tasktune.errors import ConfigError
    from tasktune.tuning.evaluation.eval import EvalConfig, evaluate as run_eval

    if not callable(log):  # it was called only once the whole eval had run: a TypeError after the work
        raise ConfigError(f"evaluate: log: expected a function taking one line (print, or lambda line: None), got "
                          f"{type(log).__name__} {log!r:.60}")
    _known_keywords("evaluate", options, EvalConfig, exclude=("run_dir",))
    return run_eval(EvalConfig(run_dir=str(run_dir), **options), log=log)


def _known_keywords(function: str, given: dict[str, Any], config: type, exclude: tuple[str, ...] = ()) -> None:
    """ConfigError naming a keyword that is no field of the `config` dataclass (was the dataclass's bare TypeError,
    `TrainConfig.__init__() got an unexpected keyword argument`), with the nearest field names."""
    import dataclasses
    import difflib

    from tasktune.errors import ConfigError

    names = [f.name for f in dataclasses.fields(config) if f.name not in exclude]
    for key in given:
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=3)
            hint = f"did you mean {', '.join(near)}?" if near else f"the settings are {config.__name__}'s fields"
            raise ConfigError(f"{function}: unknown setting {key!r}; {hint}")
