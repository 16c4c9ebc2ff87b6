"""Multi-objective search benchmark (issue 13, item 7): does the deploy-aware search (MOTPE + MO-ASHA +
feasibility first) find a better accuracy/latency front for the same training budget than TAO's way, a
weighted sum of the objectives optimised by single-objective TPE + ASHA?

    python -m benchmarks.multi_objective [--quick] [--seeds 5] [--trials 8] [--epochs 4]

harness.py (the spec, the shared deploy profile and the latency limit, the arms, one search through
`automl.run` and what is kept of it), report.py (anytime hypervolume, the figures, the PNG), __main__.py
(the command).
"""
