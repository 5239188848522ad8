"""Keras models: the seed notebook's shape checks (NHWC), parameter oracles, gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_impl.blocks import ShortcutZeroPad, apply_basic_block, apply_bottleneck_block, apply_shortcut
from keras_impl.resnet import build_model
from shared.names import canonical_layers, canonical_name, keras_name
from shared.spec import MODEL_NAMES, BlockSpec, cifar_spec, get_spec
from tests.oracles import CIFAR, IMAGENET


@pytest.fixture(scope="module")
def built():
    """``build_model(name)``, each model once for this file's tests that only read it (counts, layers, names):
    building ResNet-152 in Keras takes seconds; the cache ends with the module."""
    models = {}

    def get(name):
        if name not in models:
            models[name] = build_model(name)
        return models[name]

    yield get
    models.clear()


def counts(model):
    size = lambda ws: int(sum(np.prod(w.shape) for w in ws))
    return size(model.trainable_weights), size(model.non_trainable_weights)


def apply_block(block, shape):
    """``block`` (a function of a tensor) as a model, called on a random batch of ``shape``."""
    inp = keras.Input(shape[1:])
    model = keras.Model(inp, block(inp))
    return model(np.random.randn(*shape).astype("float32"))


def test_seed_shape_checks_nhwc():
    assert apply_block(ShortcutZeroPad(16, 32, 2), (4, 32, 32, 16)).shape == (4, 16, 16, 32)
    projection = BlockSpec("block", 16, 32, 32, 2, "projection")
    assert apply_block(lambda x: apply_shortcut(x, projection), (4, 32, 32, 16)).shape == (4, 16, 16, 32)
    basic = BlockSpec("block", 16, 32, 32, 2, "zeropad")
    assert apply_block(lambda x: apply_basic_block(x, basic), (2, 32, 32, 16)).shape == (2, 16, 16, 32)
    bottleneck = BlockSpec("block", 64, 16, 64, 2, "projection")
    assert apply_block(lambda x: apply_bottleneck_block(x, bottleneck), (2, 32, 32, 64)).shape == (2, 16, 16, 64)
    assert counts(build_model(cifar_spec(20)))[0] == CIFAR["resnet20"]  # the paper's 0.27M, Table 6
    with pytest.raises(ValueError, match="6n"):
        build_model(cifar_spec(21))
    assert build_model("resnet56")(np.zeros((4, 32, 32, 3), "float32")).shape == (4, 10)


def test_zero_pad_keeps_input_and_appends_zeros():
    x = np.random.randn(2, 6, 6, 4).astype("float32")
    y = np.asarray(ShortcutZeroPad(4, 8, 2)(x))
    assert np.array_equal(y[..., :4], x[:, ::2, ::2, :]) and not y[..., 4:].any()


@pytest.mark.parametrize("name", [n for n in CIFAR if n != "resnet1202"])
def test_cifar_counts_match_paper(built, name):
    trainable, _ = counts(built(name))
    assert trainable == CIFAR[name] == counts(built(name.replace("resnet", "plain")))[0]


@pytest.mark.slow
def test_resnet1202_count():
    assert counts(build_model("resnet1202"))[0] == CIFAR["resnet1202"]


@pytest.mark.parametrize("name", list(IMAGENET))
def test_imagenet_counts_match_torchvision(built, name):
    assert counts(built(name)) == IMAGENET[name]


def test_option_a_adds_no_parameter():
    a, b, c = (counts(build_model("resnet20", shortcut=o))[0] for o in "ABC")
    assert a == CIFAR["resnet20"] < b < c


def test_strided_convs_pad_symmetrically_like_pytorch(built):
    # A 3x3/stride-2 conv of all ones over an all-ones 4x4 image: with symmetric padding (PyTorch)
    # the top-left output sees 4 ones; TF's "same" would pad bottom/right only and see 9.
    model = built("resnet20")
    layer = model.get_layer(keras_name("layer2.0.conv1"))
    pad = model.get_layer(keras_name("layer2.0.conv1.pad"))
    x = np.ones((1, 4, 4, 16), "float32")
    kernel = np.ones(layer.kernel.shape, "float32")
    y = tf.nn.conv2d(np.asarray(pad(x)), kernel, strides=2, padding="VALID").numpy()
    assert y[0, 0, 0, 0] == 4 * 16 and y[0, -1, -1, 0] == 9 * 16


@pytest.mark.parametrize("name", ["resnet20", "plain20", "resnet18", "plain50"])
@pytest.mark.parametrize("shortcut", [None, "C"])
def test_every_parameter_gets_a_gradient_and_no_nan(name, shortcut):
    model = build_model(name, shortcut=shortcut, seed=0)
    size = 32 if get_spec(name).stem == "cifar" else 64
    x = np.random.randn(2, size, size, 3).astype("float32")
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = tf.reduce_mean(tf.square(out))
    assert np.isfinite(out.numpy()).all()
    grads = tape.gradient(loss, model.trainable_weights)
    missing = [w.path for w, g in zip(model.trainable_weights, grads) if g is None or not np.abs(g).sum() > 0]
    assert not missing


def test_a_seed_fixes_every_initial_weight_without_global_state():
    """The same seed gives the same weights whatever was drawn before; another seed other weights."""
    a = build_model("resnet8", seed=1).get_weights()
    keras.random.normal((3,))  # a draw from Keras' global generator in between
    b = build_model("resnet8", seed=1).get_weights()
    c = build_model("resnet8", seed=2).get_weights()
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_building_leaves_the_recursion_limit_as_it_was():
    import sys

    before = sys.getrecursionlimit()
    build_model("resnet110")
    assert sys.getrecursionlimit() == before


def test_bn_matches_pytorch_defaults(built):
    bn = built("resnet20").get_layer("bn1")
    assert bn.epsilon == 1e-5 and bn.momentum == 0.9


def test_registry_builds_every_model(built):
    for name in MODEL_NAMES:
        if name.endswith("1202") or name.endswith("152") or name.endswith("101"):
            continue
        m = built(name)
        convs = [la for la in m.layers if isinstance(la, keras.layers.Conv2D) and "downsample" not in la.name]
        assert len(convs) + 1 == get_spec(name).depth, name


@pytest.mark.parametrize("name", ["resnet20", "resnet50"])
def test_layer_names_are_valid_on_every_backend_and_map_back(built, name):
    # Keras' PyTorch backend refuses "." in layer/variable names; the names map back to module paths.
    model = built(name)
    names = [la.name for la in model.layers]
    assert not any("." in n for n in names) and not any("." in v.path for v in model.weights)
    assert all(keras_name(canonical_name(n)) == n for n in names if n != "input")
    assert {la.name for la in canonical_layers(get_spec(name))} <= {canonical_name(n) for n in names}
