"""The Distillery trainer: layer extraction, knowledge distillation, measurement, export.

The same code runs in the cluster's trainer pod (``distillery-trainer``) and on a laptop
(``distillery run job.yaml``).
"""
