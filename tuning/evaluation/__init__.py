"""The evaluation stage: base vs tuned answers, their metrics and report, the method comparison and the terminal chat."""
