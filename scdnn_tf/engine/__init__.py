"""Running training: the library behind `scdnn-train` (`trainer`), the step-keyed loop
(`loop`), callbacks, TensorBoard summaries, graceful preemption and the run lock."""
