"""`--router RUN`: a classification run (trained on the spec's intent data, e.g. templates/grid/intent.yaml)
that sends plain user text to a step. Its labels are step names; a label that no served run's spec has means
"no step" (the text goes to the model as it is)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tasktune.tuning.run import Trust


def check_labels(router: str, labels: list[str], tools: dict) -> None:
    """ConfigError unless some of the router's `labels` are steps of the served runs' specs (`tools`: run name ->
    TaskTools): a classification run of other labels (sentiment, another spec's intents) started, and routed
    nothing (each plain request was a 400 `unknown step 'positive'` before that was fixed)."""
    from tasktune.errors import ConfigError

    steps = sorted({step.name for t in tools.values() for step in t.spec.steps})
    if not set(labels) & set(steps):
        said = ", ".join(map(str, labels[:8])) + (", ..." if len(labels) > 8 else "")
        raise ConfigError(f"--router {router}: its labels ({said}) name no step of the served runs' specs "
                          f"({', '.join(steps) or 'no run has a spec: give one with --spec NAME=SPEC'}); train it on "
                          "the spec's intent data (e.g. templates/grid/intent.yaml)")


def load_router(run_dir: str | Path, runs: dict, trust: Trust = Trust(),
                tools: dict | None = None) -> Callable[[str], tuple[str | None, str] | None]:
    """A function text -> (None, step label) from a classification run (any served run may take the step); with
    `tools` (run name -> TaskTools), its labels are checked against their steps first (check_labels)."""
    import torch

    from tasktune.tuning.model import methods
    from tasktune.tuning.evaluation.classify import predict
    from tasktune.tuning.model.load import load_tokenizer
    from tasktune.tuning.run import RunFolder

    run_dir = Path(run_dir)
    record = RunFolder(run_dir).record(task="classification", refusal="--router {run}: not a classification run "
                                       "(task {task!r}); train one with `tasktune train --task classification` on "
                                       "the spec's intent data", trust=trust)
    cfg = record.config
    labels = methods.read_method_info(run_dir).get("labels") or record.labels
    if tools is not None:
        check_labels(str(run_dir), list(labels), tools)  # before the router's model loads
    source = methods.base_source(cfg.model, run_dir)
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code, padding_side="right")
    model = methods.load_base(cfg, model=source, quantization=record.quantization, labels=labels)
    model.config.pad_token_id = tokenizer.pad_token_id
    adapter = methods.load(model, run_dir)
    adapter.model.eval()
    lock = __import__("threading").Lock()

    def route(text: str):
        with lock, torch.inference_mode():
            (label,) = predict(adapter.model, tokenizer, [text], batch_size=1,
                               max_length=cfg.max_source_length)
        return None, labels[label]

    return route
