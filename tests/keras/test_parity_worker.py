"""keras_impl.parity: the coupled-weight-decay SGD follows PyTorch's update rule; probes see raw layer outputs."""

from __future__ import annotations

import keras
import numpy as np

from keras_impl.optim import TorchSGD, make_sgd
from keras_impl.parity import canonical_arrays, layer_outputs, with_dtype
from keras_impl.resnet import build_model
from shared.spec import get_spec


def test_coupled_sgd_reproduces_torch_update_rule():
    lr, mu, wd = 0.1, 0.9, 0.05
    w0 = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    grads = [np.array([0.3, -0.1, 0.2], np.float32), np.array([-0.4, 0.2, 0.1], np.float32)]
    var = keras.Variable(w0.copy())
    opt = make_sgd(lr, mu, wd)
    # torch.optim.SGD (docs): g += wd * w; v = mu * v + g (v = g at step 1); w -= lr * v
    w, v = w0.astype(np.float64), None
    for g in grads:
        opt.apply([keras.ops.convert_to_tensor(g)], [var])
        d = g + wd * w
        v = d if v is None else mu * v + d
        w = w - lr * v
        np.testing.assert_allclose(keras.ops.convert_to_numpy(var), w, rtol=1e-6, atol=1e-7)
    # Keras' own (decoupled) weight_decay keeps the decay out of the momentum: from step 2 on it differs
    other = keras.Variable(w0.copy())
    decoupled = keras.optimizers.SGD(lr, momentum=mu, weight_decay=wd)
    for g in grads:
        decoupled.apply([keras.ops.convert_to_tensor(g)], [other])
    assert np.abs(keras.ops.convert_to_numpy(other) - w).max() > 1e-4


def test_torch_sgd_config_round_trip():
    opt = TorchSGD(learning_rate=0.1, momentum=0.9, weight_decay=1e-4)
    again = TorchSGD.from_config(opt.get_config())
    assert again.torch_weight_decay == 1e-4 and again.weight_decay is None and float(again.momentum) == 0.9


def test_layer_outputs_are_pre_relu_and_logits_match_the_model():
    spec = get_spec("resnet20")
    model = build_model(spec)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    out = layer_outputs(model, x, ["bn1", "layer1.0"])
    assert out["bn1"].min() < 0 <= out["layer1.0"].min()  # BN output before its ReLU; block after
    np.testing.assert_allclose(out["logits"], keras.ops.convert_to_numpy(model(x, training=False)), atol=1e-5)
    assert layer_outputs(model, x, [])["logits"].shape == (2, 10)


def test_float64_copy_computes_in_float64_with_the_same_weights():
    spec = get_spec("resnet20")
    model = build_model(spec)
    wide = with_dtype(model, "float64")
    assert {v.dtype for v in wide.weights} == {"float64"}  # the float32 classifier included
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3))
    out = keras.ops.convert_to_numpy(wide(x, training=False))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(model(x.astype(np.float32), training=False)),
                               rtol=1e-4, atol=1e-5)
    kernel = canonical_arrays(wide, spec)["layer1.0.conv1.weight"]
    assert kernel.dtype == np.float64 and kernel.shape == (16, 16, 3, 3)  # PyTorch layout, not cast down
