"""What every command shares: one-line user errors and a quiet TensorFlow start
(`cli`, `tf_start`) and progress reporting (`progress`)."""
