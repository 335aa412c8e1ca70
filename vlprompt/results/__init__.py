"""Results: run records and logs → the tables papers print (``python -m vlprompt.tables``), the few-shot
figure, and ``parse_test_res.py``.

``runs`` finds runs (``run.json``, else the logs), ``identity`` says which runs a cell may average (and
names the rows it keeps apart), ``tables`` builds the tables, ``render`` prints them,
``plots`` draws the few-shot curves, ``logs`` and ``parse`` read Dassl logs as the reference parser does.
"""

from vlprompt.results.identity import RunSettings
from vlprompt.results.runs import Collection, Problem, Run, collect_runs
from vlprompt.results.tables import (
    NA,
    Cell,
    FewShotResults,
    Table,
    base2new_table,
    build_tables,
    cross_dataset_table,
    dg_table,
    few_shot_results,
    few_shot_table,
    harmonic_mean,
    tpt_tables,
    tta_tables,
)

__all__ = [
    "NA", "Cell", "Collection", "FewShotResults", "Problem", "Run", "RunSettings", "Table", "base2new_table",
    "build_tables", "collect_runs", "cross_dataset_table", "dg_table", "few_shot_results", "few_shot_table",
    "harmonic_mean", "tpt_tables", "tta_tables",
]
