"""Helpers shared by finetune_absa.py, use_absa.py and finetune_seqcls.py."""
