"""Both summary CLIs, each in its own process, honour the JSON contract and agree row by row."""

import json

import pytest

from shared.harness.summary import canonical_shape, validate_summary
from shared.names import canonical_layers
from shared.spec import get_spec
from tests.conftest import run_module
from tests.oracles import IMAGENET


@pytest.mark.parametrize("name,extra", [("resnet20", []), ("resnet50", []), ("plain34", ["--num-classes", "2"])])
def test_json_summaries_agree(name, extra):
    torch_s = json.loads(run_module("pytorch_impl.summary", "--model", name, "--json", *extra).stdout)
    keras_s = json.loads(run_module("keras_impl.summary", "--model", name, "--json", *extra).stdout)
    for s in (torch_s, keras_s):
        validate_summary(s)
        assert s["model"] == name
    assert (torch_s["framework"], keras_s["framework"]) == ("torch", "keras")
    assert torch_s["trainable"] == keras_s["trainable"]
    assert torch_s["non_trainable"] == keras_s["non_trainable"]
    if name in IMAGENET:
        assert (torch_s["trainable"], torch_s["non_trainable"]) == IMAGENET[name]
    spec = get_spec(name, num_classes=int(extra[1]) if extra else None)
    expected = [layer.name for layer in canonical_layers(spec)]
    assert [r["name"] for r in torch_s["layers"]] == expected == [r["name"] for r in keras_s["layers"]]
    for a, b in zip(torch_s["layers"], keras_s["layers"]):
        assert canonical_shape(a["output_shape"], "NCHW") == canonical_shape(b["output_shape"], "NHWC"), a["name"]
        assert (a["params"], a["non_trainable"]) == (b["params"], b["non_trainable"]), a["name"]
    kinds = {layer.name: layer.kind for layer in canonical_layers(spec)}
    for s in (torch_s, keras_s):  # the leaf rows add up to the totals: no parameter outside a row
        leaves = [r for r in s["layers"] if kinds[r["name"]] != "block"]
        assert sum(r["params"] for r in leaves) == s["trainable"]
        assert sum(r["non_trainable"] for r in leaves) == s["non_trainable"]


def test_human_summaries_print_framework_tables():
    out = run_module("pytorch_impl.summary", "--model", "resnet20").stdout
    assert "Total params: 269,722" in out
    out = run_module("keras_impl.summary", "--model", "resnet20").stdout
    assert "Trainable params: 269,722" in out and "layer3_2" in out  # Keras names: torchvision paths, "." -> "_"


def test_bad_model_name_is_a_clear_error():
    proc = run_module("pytorch_impl.summary", "--model", "resnet21", check=False)
    assert proc.returncode == 2 and "unknown model 'resnet21'" in proc.stderr
    assert "Traceback" not in proc.stderr
