"""The training side of a stage type: what `StagePlugin.trainer` names.

A `StageTrainer` reads a data file into examples, writes and reads examples back for
reference sets, trains a model version, predicts on examples and turns predictions into
the type's metrics. `textworker train`, `textworker eval`, fine-tuning, the gate's scoring
and reference sets reach a stage type's training only through it.

Examples are in each type's own shape: `(text, label)` for classification, SQuAD dicts
for QA, `(source, reference)` for translation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Progress = Callable[[int, int, dict[str, Any]], None]


class StageTrainer:
    """Training and evaluation of one stage type (subclasses fill in every method)."""

    auto_model = "AutoModel"  # the transformers Auto class its model versions load with
    unit = "rows"  # what `eval` counts as the model reads its input

    # ------------------------------------------------------------------ examples

    def read(self, path: str | Path, stage: Any = None, labels: Sequence[str] | None = None, limit: int | None = None) -> list[Any]:
        """The examples of a data file (`stage` may be None: a reference set read without a pipeline)."""
        raise NotImplementedError

    def stratum(self, example: Any) -> str:
        """The stratum a reference-set sample balances over."""
        return "all"

    def encode(self, example: Any) -> dict[str, Any]:
        """An example as a JSON object (one line of a reference set)."""
        raise NotImplementedError

    def decode(self, row: dict[str, Any]) -> Any:
        """`encode` undone."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training

    def train(self, stage: Any, examples: list[Any], out: str | Path, *, base: str | None, labels: Sequence[str] | None = None,
              eval_examples: list[Any] | None = None, progress: Progress | None = None, **params: Any) -> dict[str, Any]:
        """Train a version into `out` from `base` (None: from scratch where the type can); returns its info.

        `params` are the common knobs (epochs, lr, batch_size, max_length, max_minutes, seed, size);
        a type ignores those it has no use for."""
        raise NotImplementedError

    # ------------------------------------------------------------------ evaluation

    def predict(self, stage: Any, model: Any, tokenizer: Any, examples: list[Any]) -> list[Any]:
        """What the stage decides for each example, as the running stage would."""
        raise NotImplementedError

    def metrics(self, stage: Any, examples: list[Any], predictions: list[Any], labels: Sequence[str] | None) -> dict[str, Any]:
        """The type's metrics of predictions against the examples' gold answers."""
        raise NotImplementedError

    def evaluate(self, stage: Any, model: Any, tokenizer: Any, examples: list[Any], labels: Sequence[str] | None) -> dict[str, Any]:
        """`textworker eval`'s metrics on a data file's examples."""
        return self.metrics(stage, examples, self.predict(stage, model, tokenizer, examples), labels)

    def counted_module(self, model: Any) -> Any:
        """The module whose inputs `eval` counts for its progress bar."""
        return model


def pick(params: dict[str, Any], *names: str) -> dict[str, Any]:
    """The given, non-None `params` among `names`."""
    return {name: params[name] for name in names if params.get(name) is not None}
