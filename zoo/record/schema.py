"""The run record: one typed schema for every kind of run, versioned by `schema_version`.

A record is a `RunRecord` of its kind: `LMRecord` for `pretrain` and `finetune`, `GlueRecord` for a
GLUE cell. The fields every run has (status, reason, timings, environment, smoke) live on the base
class; `zoo.record.store` is the one writer and the one reader. Values are plain JSON types; a value
that is not a finite number is written as `null` (JSON has no NaN), and a run whose result is not
finite is `status: failed` with the reason (zoo.train.lifecycle decides that).

Version history:
- 1: records without `schema_version`; non-finite numbers written as "nan"/"inf" strings (LM) or null
  (GLUE); smoke decided by the leaderboard from the recipe file. `store.upgrade` reads them.
- 2: this schema; `smoke` decided once, when the record is written; `segments` list the timed parts of
  a resumed run (`wall_time_s` is their total).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 2
RECORD_FILE = "run.json"
RECIPE_FILE = "recipe.yaml"

Status = Literal["running", "ok", "failed"]
# A field with this metadata is left out of run.json while it holds no value (None, or only Nones): a run
# that failed before evaluating has no `metrics` at all, never a row of nulls that reads like a result.
OMIT_EMPTY = {"omit_empty": True}


@dataclass
class Segment:
    """One uninterrupted stretch of a run: the first, and one more per resume."""

    started_at: str
    finished_at: str | None = None
    wall_time_s: float | None = None
    from_step: int | None = None
    train_time_s: float | None = None  # training only, to the segment's last checkpoint or its end: what a resume keeps


@dataclass
class RunRecord:
    """What every run records, whatever its kind."""

    run_id: str
    kind: str
    model: str
    status: Status = "running"
    reason: str | None = None
    smoke: bool = False
    recipe: str = RECIPE_FILE
    recipe_hash: str = ""
    started_at: str = ""
    finished_at: str | None = None
    wall_time_s: float | None = None
    segments: list[Segment] = field(default_factory=list)
    params: int | None = None
    steps: int | None = None
    train_time_s: float | None = None  # a resumed run's: its segments' total
    data: dict[str, Any] = field(default_factory=dict)
    launch: dict[str, Any] | None = field(default=None, metadata=OMIT_EMPTY)  # how many processes, which engine
    deepspeed_config: str | None = field(default=None, metadata=OMIT_EMPTY)  # deepspeed.json when DeepSpeed ran
    environment: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def finished(self) -> bool:
        return self.status in ("ok", "failed")

    @property
    def device(self) -> str:
        """'CPU x2', or the GPU's name."""
        return str((self.environment.get("hardware") or {}).get("device") or "")

    @property
    def world_size(self) -> int:
        return int((self.launch or {}).get("world_size") or 1)

    def results(self) -> dict[str, Any]:
        """The numbers an ok run must have, finite (the lifecycle fails a run otherwise)."""
        return {}


@dataclass
class LMMetrics:
    """Token-weighted evaluation of a language model (and the last logged training loss)."""

    eval_loss: float | None = None
    perplexity: float | None = None
    eval_tokens: int | None = None
    train_loss: float | None = None


@dataclass
class LMRecord(RunRecord):
    """A pretraining or continued-training run (`zoo pretrain`, `zoo finetune`)."""

    name: str = ""
    corpus: str = ""
    objective: str = ""
    metrics: LMMetrics = field(default_factory=LMMetrics, metadata=OMIT_EMPTY)
    before: LMMetrics | None = field(default=None, metadata=OMIT_EMPTY)  # finetune: the evaluation before training
    tokens_seen: int | None = None
    tokens_per_s: float | None = None  # of the last segment: the tokens it trained over its training time
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed: bool = False
    resumed_from_step: int | None = None
    checkpoint: str | None = field(default=None, metadata=OMIT_EMPTY)

    def results(self) -> dict[str, Any]:
        return {"eval_loss": self.metrics.eval_loss, "perplexity": self.metrics.perplexity}


@dataclass
class HParams:
    """The grid coordinates of a GLUE cell."""

    batch_size: int
    lr: float
    epochs: float
    seed: int


@dataclass
class GlueMetrics:
    """A cell's dev metrics after its last epoch (fractions) and the task score they make."""

    dev: dict[str, float] = field(default_factory=dict)
    score: float | None = None


@dataclass
class GlueRecord(RunRecord):
    """One GLUE cell: a (task, batch size, lr, seed) fine-tuning run."""

    model_tag: str = ""
    task: str = ""
    tokenizer: str = ""
    hparams: HParams | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    metrics: GlueMetrics = field(default_factory=GlueMetrics)
    predictions: dict[str, Any] | None = field(default=None, metadata=OMIT_EMPTY)  # with --predict-test

    def results(self) -> dict[str, Any]:
        return {"score": self.metrics.score, **{f"dev {name}": value for name, value in self.metrics.dev.items()}}


Record = LMRecord | GlueRecord
RECORD_TYPES: dict[str, type[LMRecord] | type[GlueRecord]] = {
    "pretrain": LMRecord, "finetune": LMRecord, "glue": GlueRecord,
}
