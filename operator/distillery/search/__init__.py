"""The search core shared by the operator and `distillery search`: the space (space.py), the next
trial's parameters (sampler.py), the frontier and best trial of a table of trials (trials.py), and
the local, one-trial-after-another runner (local.py). Everything but local.py is pure."""
