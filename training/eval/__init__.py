"""Evaluation: benchmark readers, answer metrics, the evaluator and the GEMeX grounding scorer."""
