"""What finetune_absa.py, use_absa.py and finetune_seqcls.py share; the training loops live in the scripts.

Generic (any encoder, any task): `training` (settings, Accelerator, run state, best-model save and reload,
checkpoints, seeds, results), `batches` (samplers and data loaders), `files` (reading JSONL / CSV / TSV / Parquet /
Hub data, `DataError`, the validation carve), `metrics`, `reports` (atomic files, plots), `launch` (launch checks,
FSDP readiness, native bf16).
Aspect-based sentiment: `data` (ABSA splits from any source), `aspects` (aspect masks, windows, the collator),
`model` (`AbsaClassifier`), `predictor` (`AbsaPredictor`: the one way into a trained model), `corpus`
(prediction tables, a chunk at a time, resumable), `evaluation` (use_absa.py evaluate's split, scores, report).
Sequence classification: `text_data` (splits and task inference), `text_predictions` (through transformers'
pipeline).
"""
