"""Per-epoch metrics of one rule's run: metrics.csv and metrics.jsonl (rewritten atomically after every epoch,
checkpoints.write_text_atomic, so a resumed run drops the rows of the epoch it repeats), and TensorBoard scalars
when asked."""
from __future__ import annotations

import csv
import io
import json
import os

from .checkpoints import write_text_atomic as _write_atomic


class Records:
    def __init__(self, folder: str, *, enabled: bool = True, tensorboard: bool = False,
                 resume_after_epoch: int | None = None) -> None:
        self.folder, self.enabled = folder, enabled
        self.rows: list[dict] = []
        self.tb = None
        if not enabled:
            return
        os.makedirs(folder, exist_ok=True)
        jsonl = os.path.join(folder, "metrics.jsonl")
        if resume_after_epoch is not None and os.path.isfile(jsonl):
            with open(jsonl) as f:
                rows = [json.loads(line) for line in f if line.strip()]
            self.rows = [r for r in rows if r["epoch"] <= resume_after_epoch and r.get("complete", True)]
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            purge = None if resume_after_epoch is None else resume_after_epoch + 1
            self.tb = SummaryWriter(os.path.join(folder, "tensorboard"), purge_step=purge)

    def add(self, row: dict) -> None:
        if not self.enabled:
            return
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        self._flush()
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                    self.tb.add_scalar(key, value, row["epoch"])
            self.tb.flush()

    def _flush(self) -> None:
        _write_atomic(os.path.join(self.folder, "metrics.jsonl"),
                      "".join(json.dumps(r) + "\n" for r in self.rows))
        fields: list[str] = []
        for r in self.rows:
            fields += [k for k in r if k not in fields]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        _write_atomic(os.path.join(self.folder, "metrics.csv"), buf.getvalue())

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def best_row(rows: list[dict]) -> dict | None:
    """The row with the lowest test error (the papers report the best test error of a run)."""
    rows = [r for r in rows if "test_error" in r]
    return min(rows, key=lambda r: (r["test_error"], r["epoch"])) if rows else None
