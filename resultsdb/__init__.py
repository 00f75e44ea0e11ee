"""The results database: one sqlite file of evaluation records (docs/evaluation.md).

Every tool that produces a final number (pretraining's end, ViTDet and Segmenter final metrics, the probes in
``transfer/analysis/``) calls :func:`record_result`; ``tools/results.py`` lists, compares and plots the records.
Imports nothing heavy: torch only when a checkpoint's method is read.
"""

from .db import SCHEMA_VERSION, ResultsDB, ResultsDBError, default_db_path
from .record import record_result

__all__ = ["SCHEMA_VERSION", "ResultsDB", "ResultsDBError", "default_db_path", "record_result"]
