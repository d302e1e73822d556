"""Serving a model: the SavedModel's signatures (`signatures`), export of a run's
checkpoint (`exporter`) and the library behind `scdnn-predict` (`predictor`)."""
