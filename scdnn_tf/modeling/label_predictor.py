"""The paper's label predictors: one on tight crops, one on expanded (context) crops.

Each is flatten -> FC -> FC -> C logits applied to every patch independently; the two
branches have separate weights (they learn different evidence: the object vs its
surroundings). `part="embed"` and `part="classify"` split the call at the hidden layer, where the
optional relation module and the adaptive-context gate act.
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="scdnn_tf")
class LabelPredictor(layers.Layer):
    """Per-patch class logits from pooled crops.

    Args:
      num_classes: C.
      fc_units: width of the two hidden fully connected layers (paper: 1024).
      dropout: dropout rate after each hidden layer (0 = off).

    Call:
      inputs: [B, N, S, S, D] pooled patch features (or, with part="classify", the
        [B, N, fc_units] embeddings of part="embed").

    Returns:
      [B, N, C] float32 patch logits.
    """

    def __init__(self, num_classes: int, fc_units: int = 1024, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        if int(fc_units) < 1:
            raise ValueError(f"fc_units must be >= 1, got {fc_units!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.num_classes = int(num_classes)
        self.fc_units = int(fc_units)
        self.dropout = float(dropout)
        self.fc1 = layers.Dense(self.fc_units, activation="relu", name="fc1")
        self.fc2 = layers.Dense(self.fc_units, activation="relu", name="fc2")
        self.drop = layers.Dropout(self.dropout, name="dropout")
        # float32 logits also under mixed precision: the losses, the patch max and the
        # score thresholds read them (the hidden layers run in the compute dtype).
        self.classifier = layers.Dense(self.num_classes, dtype="float32", name="classifier")

    def build(self, input_shape):
        flat = 1
        for d in input_shape[2:]:
            flat *= int(d)
        self.fc1.build((None, flat))
        self.fc2.build((None, self.fc_units))
        self.classifier.build((None, self.fc_units))

    def call(self, inputs, training=False, part="all"):
        """`part`: "all" (crops -> logits), "embed" (crops [B,N,S,S,D] -> [B,N,fc_units]
        hidden embeddings) or "classify" (embeddings -> [B,N,C] float32 logits)."""
        if part not in ("all", "embed", "classify"):
            raise ValueError(f"part must be 'all', 'embed' or 'classify', got {part!r}")
        x = inputs
        if part != "classify":
            shape = ops.shape(x)
            x = ops.reshape(x, (shape[0] * shape[1], -1))
            x = self.drop(self.fc1(x), training=training)
            x = self.drop(self.fc2(x), training=training)
            x = ops.reshape(x, (shape[0], shape[1], self.fc_units))
            if part == "embed":
                return x
        return self.classifier(x)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, fc_units=self.fc_units, dropout=self.dropout)
        return config
