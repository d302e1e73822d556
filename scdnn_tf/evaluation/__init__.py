"""Scoring and inspecting a model: the library behind `scdnn-evaluate` (`evaluator`), the
multi-label metrics (`metrics`), exact probability thresholds on logits (`thresholds`) and
the predicted patches drawn on images (`visualize`)."""
