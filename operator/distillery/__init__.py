"""Distillery: distill teacher models into smaller, faster students on Kubernetes.

This package holds what the operator and the command line need: the API models (the single
source of truth for the CRDs), the store, the acceptance rule and the Pareto frontier. It never
imports torch; the trainer lives in the separate ``distillery_trainer`` package.
"""

__version__ = "0.1.0"
