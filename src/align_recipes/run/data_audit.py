"""The data audit every preference, KTO and reward run starts with (data/audit.py does the auditing).

Each training source is audited with the run's tokenizer and `max_length`; the run prints one line per
source and keeps the full report for the run folder (`audit.json`, written once the folder is the run's).
A finding that the recipe's `data.audit.fail_on` names stops the run before the model loads: an
`AuditStop` (exit 2, naming the rows and the key), with audit.json and a `failed` summary left behind.
"""

from __future__ import annotations

import json
from pathlib import Path

from align_recipes import console
from align_recipes.data import DataError
from align_recipes.data.audit import AUDITED_KINDS, audit, one_line
from align_recipes.data.spec import rows_text
from align_recipes.paths import write_atomic
from align_recipes.run.rundir import is_main_process

AUDIT_FILE = "audit.json"


class AuditStop(DataError):
    """The audit found what `data.audit.fail_on` stops on; `record` is the report audit.json keeps."""

    def __init__(self, message: str, record: dict, **where):
        super().__init__(message, **where)
        self.record = record


def audit_training_data(plan, tokenizer, config) -> dict | None:
    """Audit `plan`'s training sources; returns the record for audit.json (None for algorithms whose data
    the audit does not read). Raises AuditStop when a finding `data.audit.fail_on` names is present."""
    if plan.algorithm.data_kind not in AUDITED_KINDS:
        return None
    max_length = getattr(config, "max_length", None)
    reports = []
    for spec in plan.data.train:
        report = audit(
            spec,
            plan.base_dir,
            kind=plan.algorithm.data_kind,
            max_length=max_length,
            tokenizer=tokenizer,
            tokenizer_name=plan.model.name_or_path,
        )
        report["section"] = spec.section
        if is_main_process():
            console.info(one_line(report, spec.section))
        reports.append(report)
    fail_on = list(plan.data.audit.fail_on)
    record = {"fail_on": fail_on, "sources": reports}
    hits = [
        (report, name)
        for report in reports
        for name in fail_on
        if report["findings"].get(name, {}).get("count")
    ]
    if hits:
        stops = [
            f"{report['findings'][name]['count']} {name} ({rows_text(report['findings'][name]['rows'])}) in "
            f"{report['section']}"
            for report, name in hits
        ]
        named = list(dict.fromkeys(name for _, name in hits))
        file, line = plan.provenance.locate("data.audit.fail_on")
        raise AuditStop(
            f"the data audit found {'; '.join(stops)}, and data.audit.fail_on stops on "
            f"{'it' if len(stops) == 1 else 'them'}",
            record,
            file=file or plan.recipe_path,
            line=line,
            key="data.audit.fail_on",
            fix=f"fix or remove those rows (full report: {Path(plan.output_dir) / AUDIT_FILE}), or take "
            f"{', '.join(named)} out of data.audit.fail_on",
        )
    return record


def write_report(run_dir: Path, record: dict | None) -> None:
    """audit.json in the run folder (main process only)."""
    if record is not None and is_main_process():
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(run_dir) / AUDIT_FILE, json.dumps(record, indent=2) + "\n")
