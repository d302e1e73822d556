"""The training loop: the model's own `train_step` under a tf.distribute strategy, step-keyed.

A small loop of the shape TF Model Garden's trainers have, instead of `keras.Model.fit`:
`strategy.run(model.train_step)` inside one `tf.function` per step, the logs reduced
over the replicas (`strategy.reduce(MEAN)`, which works on scalars under every strategy),
Keras callbacks driven through `keras.callbacks.CallbackList`. It uses public Keras and TF
APIs only (`fit` under a strategy needed private attributes to skip its symbolic build
batch and to reshape logs for multi-worker reductions).

"Epochs" are chunks of `steps_per_epoch` batches: the model's loss trackers (running
means the train step returns) are reset at each chunk's start, where callbacks get
`on_epoch_begin`, as under `fit`. Training ends when a callback sets
`model.stop_training` (`callbacks.StopAtStep` at `--train_steps`); then, as `fit` does,
the optimizer's EMA (if any) is copied into the model.
"""

from __future__ import annotations

import itertools

import keras
import tensorflow as tf


def make_step_fn(model: keras.Model, strategy: tf.distribute.Strategy, jit_compile: bool = False):
    """fn(iterator) -> {name: scalar}: one optimizer step on the next distributed batch.

    As in Keras' own trainer, autograph does not convert the step (Keras code is plain
    Python control flow), and only the replica step is XLA-compiled.
    """

    @tf.autograph.experimental.do_not_convert
    def replica_step(batch):
        return model.train_step(batch)

    if jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True, reduce_retracing=True)

    @tf.function
    @tf.autograph.experimental.do_not_convert
    def step_fn(iterator):
        logs = strategy.run(replica_step, args=(next(iterator),))
        return {name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                for name, value in logs.items()}

    return step_fn


def train_loop(model: keras.Model, strategy: tf.distribute.Strategy, dataset, callbacks,
               start_step: int, steps_per_epoch: int, jit_compile: bool = False) -> None:
    """Runs steps on `dataset` (a distributed dataset) until a callback stops training.

    Args:
      model: compiled, built model with a `train_step(batch) -> {name: scalar}`.
      strategy: the strategy the model was built under.
      dataset: from `strategy.distribute_datasets_from_function` (or a plain dataset
        under the default strategy); repeated, so it never runs out.
      callbacks: Keras callbacks (step-keyed ones read `model.optimizer.iterations`).
      start_step: the restored global step (sets the first epoch index, as `fit`'s
        `initial_epoch = start_step // steps_per_epoch`).
      steps_per_epoch: batches per chunk between tracker resets.
      jit_compile: compile the replica step with XLA.
    """
    callback_list = keras.callbacks.CallbackList(list(callbacks), model=model,
                                                 add_history=False, add_progbar=False)
    step_fn = make_step_fn(model, strategy, jit_compile)
    iterator = iter(dataset)
    model.stop_training = False
    callback_list.on_train_begin()
    with strategy.scope():
        for epoch in itertools.count(start_step // steps_per_epoch):
            model.reset_metrics()
            callback_list.on_epoch_begin(epoch)
            for batch in range(steps_per_epoch):
                callback_list.on_train_batch_begin(batch)
                logs = {name: float(value) for name, value in step_fn(iterator).items()}
                callback_list.on_train_batch_end(batch, logs)
                if model.stop_training:
                    break
            callback_list.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
    model.optimizer.finalize_variable_values(model.trainable_variables)  # EMA, as fit does
    callback_list.on_train_end(logs)
