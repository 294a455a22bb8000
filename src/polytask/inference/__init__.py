"""Inference: what a trained model does after training, shared by training (validation),
the run directory's Predictor, slimming, serving and export.

``predict`` runs a model over many rows, ``evaluation`` turns predictions into per-task
metrics and the overall score, ``lean`` folds a model into its fast serving form, and
``predictor`` loads a run directory and predicts or evaluates raw rows.
"""
