"""The benchmark: real vs real + synthetic classifiers, and the quality of the generator.

    stats.py      means with t-intervals over seeds, paired gains and their tests
    arms.py       Arm (what one classifier learns from) and run_arm, the one way to train and score
    evaluate.py   targets, the judge and its cross-fitted halves, FID/KID with floors, conditioning accuracy; `synthaug evaluate`
    run.py        run_benchmark: the stages of `synthaug benchmark`
"""

from synthaug.benchmark.evaluate import evaluate_synthetic
from synthaug.benchmark.run import check_no_leakage, run_benchmark, take_ratio
from synthaug.benchmark.stats import paired_gain, summarize

__all__ = ["check_no_leakage", "evaluate_synthetic", "paired_gain", "run_benchmark", "summarize", "take_ratio"]
