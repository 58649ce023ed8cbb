"""What finetune_absa.py, use_absa.py and finetune_seqcls.py share; the training loops live in the scripts.

Both tasks: `settings` (the shared settings and their parsing), `training` (Accelerator, run state, schedule, seeds),
`checkpoints` (output folder, resume, best model, rotation), `batches` (seeded samplers, loaders), `encoders`
(opening a pretrained encoder and its tokenizer, FSDP loading), `files` (table readers and the atomic writer,
`DataError`, the label rule), `splits` (split files, the validation carve and its record), `metrics`, `reports`
(results, plots), `launch` (launch checks, precision, native bf16).
Aspect-based sentiment: `data` (labelled ABSA splits from any source), `aspects` (placing an aspect in its text,
aspect masks, windows, the collator), `model` (`AbsaClassifier`), `predictor` (`AbsaPredictor`: the one way into a
trained model), `corpus` (prediction tables, a chunk at a time, resumable), `evaluation` (use_absa.py evaluate's
split, scores and report).
Sequence classification: `seqcls_data` (splits, task inference, test prediction rows).
"""
