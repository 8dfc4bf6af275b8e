"""MLflow tracking: one experiment per model; one parent run per pipeline run (a `dvc repro`,
a `dvc exp run`, or whatever sets PIPELINE_RUN_ID) with the evaluated variants and the
precision search as nested runs, and the report's comparison table, plots and recommendation
in the parent.

Stages are separate processes: they find their parent by a shared key (pipeline_run). The
first stage that needs the parent creates it and ends it at once, so no run is ever left
RUNNING; later stages find it by its tag. A stage run by hand, with no key, logs a plain
top-level run tagged `pipeline.run=standalone`. Variant runs are only ever created, so
re-running a stage adds a run; earlier records are never overwritten.
Writers to a local store take a file lock, so concurrent evaluations (dvc queue -j 2, several
shells) all land. A remote tracking URI is checked for an answer before anything is logged.

Metric names are short and grouped by kind with "/" (accuracy/, placement/, latency/,
program/), so MLflow's chart view groups and filters them; the same names (with "." in
place of "/") are the keys of each variant's DVC metrics file (summary.json).

The package: names.py (metric, param and tag names), provenance.py (commit, versions, the
process and the pipeline run a run belongs to), store.py (checks, the lock, orphaned runs),
runs.py (experiments, parent and nested runs, the report, the saved view).
"""
from pipeline.errors import UserError
from pipeline.tracking.names import (clean_params, device_tags, flatten, headline_ms,
                                     metric_names, split_numeric, summary)
from pipeline.tracking.provenance import (JOB_ENV, RUN_HOST, RUN_JOB, RUN_PID, PipelineRun,
                                          Process, dvc_ancestor, dvc_stage_hashes, git_commit,
                                          pipeline_run, process_tags, versions)
from pipeline.tracking.runs import (KIND, NOTE, PARENT_RUN, PIPELINE_KEY, RUN_TYPE,
                                    experiment_id, log_report, log_run, parent_run, save_view,
                                    session, view_url)
from pipeline.tracking.store import check_store, check_uri, close_orphans, store_lock

__all__ = ["JOB_ENV", "KIND", "NOTE", "PARENT_RUN", "PIPELINE_KEY", "RUN_HOST", "RUN_JOB",
           "RUN_PID", "RUN_TYPE", "PipelineRun", "Process", "UserError", "check_store",
           "check_uri", "clean_params", "close_orphans", "device_tags", "dvc_ancestor",
           "dvc_stage_hashes", "experiment_id", "flatten", "git_commit", "headline_ms",
           "log_report", "log_run", "metric_names", "parent_run", "pipeline_run",
           "process_tags", "save_view", "session", "split_numeric", "store_lock", "summary",
           "versions", "view_url"]
