"""Inference copies of a trained model: each batch normalization folded into the convolution before it, and
mixed-precision layers computing in the precision this machine runs fastest."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

from lib.backend import machine_policy
import lib.dropblock  # noqa: F401  (registers DropBlock with Keras, so saved models that use it load)
import lib.unet  # noqa: F401  (registers StageOutputs, likewise)
from lib.losses import CUSTOM_OBJECTS


def foldable_pairs(model: keras.Model) -> dict[str, str]:
    """Batch norm name -> name of the linear Conv2D whose output only it reads (the pairs that can be folded)."""
    if any(len(layer.get("inbound_nodes", [])) > 1 for layer in model.get_config().get("layers", [])):
        return {}  # a layer called more than once: new weights would change all its uses, so fold nothing
    producers = {id(layer.output): layer for layer in model.layers
                 if isinstance(layer, layers.Conv2D) and not isinstance(layer, layers.Conv2DTranspose)}
    readers = {}
    for layer in model.layers:
        for tensor in layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]:
            readers[id(tensor)] = readers.get(id(tensor), 0) + 1
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization) or layer.axis not in (-1, len(layer.input.shape) - 1):
            continue
        conv = producers.get(id(layer.input))
        if conv is not None and conv.get_config()["activation"] == "linear" and readers[id(conv.output)] == 1:
            pairs[layer.name] = conv.name
    return pairs


def fold_batch_norm(model: keras.Model, into: keras.Model | None = None) -> keras.Model:
    """An inference copy of model with each foldable batch norm merged into the convolution before it; with
    into (an earlier fold of this model), that copy with its weights brought up to date.

    The scale and shift of each batch norm move into that convolution's kernel and bias, and the batch
    norm leaves the graph; the model itself is returned when none can be folded. At inference a batch
    norm is a per-channel affine map, so it costs a full pass over the activations for nothing: folded,
    TensorFlow runs convolution, bias and ReLU as one fused operation.
    """
    pairs = foldable_pairs(model)
    if not pairs:
        return model
    norm_of = {conv: norm for norm, conv in pairs.items()}
    # Refolding into the same copy keeps its compiled predict function: a new copy each epoch retraces
    # it, which takes seconds and makes TensorFlow warn about excessive retracing.
    folded = into if into is not None else _folded_graph(model, pairs)
    for layer in folded.layers:
        if not layer.weights:
            continue
        source = model.get_layer(layer.name)
        if layer.name not in norm_of:
            layer.set_weights(source.get_weights())
            continue
        bn = model.get_layer(norm_of[layer.name])
        kernel = keras.ops.convert_to_numpy(source.kernel).astype(np.float64)
        bias = keras.ops.convert_to_numpy(source.bias).astype(np.float64) if source.use_bias else 0.0
        gamma = keras.ops.convert_to_numpy(bn.gamma).astype(np.float64) if bn.scale else 1.0
        beta = keras.ops.convert_to_numpy(bn.beta).astype(np.float64) if bn.center else 0.0
        mean = keras.ops.convert_to_numpy(bn.moving_mean).astype(np.float64)
        scale = gamma / np.sqrt(keras.ops.convert_to_numpy(bn.moving_variance).astype(np.float64) + bn.epsilon)
        layer.set_weights([(kernel * scale).astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)])
    return folded


def _folded_graph(model: keras.Model, pairs: dict[str, str]) -> keras.Model:
    """A copy of model's graph without the batch norms of pairs, their convolutions given a bias (weights unset)."""
    biased = set(pairs.values())

    def clone(layer):
        config = layer.get_config()
        if layer.name in biased:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        # A folded batch norm drops out of the graph: its input goes straight on.
        return args[0] if layer.name in pairs else layer(*args, **kwargs)

    # A fresh, uncompiled graph over the same layers: cloning a compiled model would also compile the
    # copy, which needs the training loss (and fails for ours, which is not registered with Keras).
    graph = keras.Model(model.inputs, model.outputs, name=model.name)
    return keras.models.clone_model(graph, clone_function=clone, call_function=call)


def _mixed_layers(model: keras.Model) -> set[str]:
    return {layer.name for layer in model.layers if layer.dtype_policy.name.startswith("mixed_")}


def with_policy(model: keras.Model, policy: str) -> keras.Model:
    """An inference copy of model whose mixed-precision layers compute under policy; float32 layers stay float32.

    A model keeps the dtype policy it was trained under: float16 layers from a GPU run a CPU's
    convolutions several times slower, and bfloat16 ones on a CPU without AMX twice as slow.
    """
    mixed = _mixed_layers(model)
    if not mixed or all(model.get_layer(name).dtype_policy.name == policy for name in mixed):
        return model

    clones: dict[int, layers.Layer] = {}

    def clone(layer):
        # Keras clones once per call: a layer called more than once (a refined U-Net's) must stay one layer.
        if id(layer) not in clones:
            config = layer.get_config()
            if layer.name in mixed:
                config["dtype"] = policy
            clones[id(layer)] = layer.__class__.from_config(config)
        return clones[id(layer)]

    graph = keras.Model(model.inputs, model.outputs, name=model.name)  # uncompiled, as in fold_batch_norm
    copy = keras.models.clone_model(graph, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def compute_dtype(model: keras.Model) -> str:
    """The dtype the model's first convolution computes in (float32, bfloat16 or float16)."""
    return next((layer.compute_dtype for layer in model.layers if isinstance(layer, layers.Conv2D)), "float32")


def for_this_machine(model: keras.Model) -> keras.Model:
    """The model ready for prediction here: batch norms folded, mixed precision as fast as this machine runs it."""
    folded = fold_batch_norm(model)
    # Only a mixed-precision model needs the machine's policy (which lists the devices to find it).
    return with_policy(folded, machine_policy()) if _mixed_layers(folded) else folded


def load_saved(path: Path) -> keras.Model:
    """A saved model (.keras) as trained, uncompiled, with the project's losses and metrics known."""
    return keras.models.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=False, safe_mode=True)


def load_for_inference(path: Path) -> keras.Model:
    """A saved model (.keras) ready for prediction here: uncompiled, batch norms folded, precision as fast as here."""
    return for_this_machine(load_saved(path))
