"""``pipeline.json``, the run directory's record of each stage: the key it was started and completed
under, when, and how long it took; and the run's configuration. This module owns its name and format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from scircuits.files import write_atomic

STATE_FILE = "pipeline.json"


class StageRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    started_key: str | None = None
    completed_key: str | None = None
    started: str | None = None
    completed: str | None = None
    seconds: float | None = None


class PipelineRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    stages: dict[str, StageRecord] = {}
    run_config: dict[str, Any] | None = None


class PipelineState:
    """pipeline.json of one run directory; every ``record`` rewrites it atomically. An unreadable
    file counts as empty (every stage then checks its artifact)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / STATE_FILE
        self.data = PipelineRecord()
        self.recorded = False  # whether this process recorded anything yet
        if self.path.is_file():
            try:
                self.data = PipelineRecord.model_validate_json(self.path.read_text())
            except ValidationError:
                self.data = PipelineRecord()

    def stage(self, name: str) -> StageRecord:
        return self.data.stages.get(name, StageRecord())

    def record(self, name: str, **values: Any) -> None:
        self.data.stages[name] = StageRecord(**{**self.stage(name).model_dump(exclude_unset=True), **values})
        self.recorded = True
        self.save()

    def set_run_config(self, config: dict[str, Any]) -> None:
        self.data.run_config = config

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.data.model_dump(mode="json", exclude_none=False), indent=2))
