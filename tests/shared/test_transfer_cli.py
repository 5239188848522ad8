"""export.transfer's user errors: one line, the bad value and what to do, no traceback."""

from __future__ import annotations

from tests.conftest import run_module

# Downloads turned off explicitly, so the test never downloads on a networked machine either: every HTTP(S)
# request of the child (torch.hub uses urllib, which honours these variables) goes to a closed local port.
OFFLINE = {name: "http://127.0.0.1:9" for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
OFFLINE |= {"no_proxy": "", "NO_PROXY": ""}


def test_pretrained_offline_names_the_file_and_url(tmp_path):
    proc = run_module("export.transfer", "--from", "torch", "--to", "keras", "--model", "resnet34", "--pretrained",
                      "--out", tmp_path / "r34.weights.h5", check=False,
                      env={"TORCH_HOME": str(tmp_path / "th"), **OFFLINE})
    assert proc.returncode != 0
    assert "Connection refused" in proc.stderr  # the download was tried, through the closed port only
    assert not (tmp_path / "th" / "hub" / "checkpoints").exists() or not any(
        (tmp_path / "th" / "hub" / "checkpoints").iterdir())
    expected_path = tmp_path / "th" / "hub" / "checkpoints" / "resnet34-b627a593.pth"
    assert str(expected_path) in proc.stderr
    assert "https://download.pytorch.org/models/resnet34-b627a593.pth" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r34.weights.h5").exists()


def test_pretrained_needs_a_torchvision_model(tmp_path):
    proc = run_module("export.transfer", "--from", "torch", "--to", "keras", "--model", "plain34", "--pretrained",
                      "--out", tmp_path / "p.weights.h5", check=False)
    assert proc.returncode != 0 and "resnet18, resnet34, resnet50" in proc.stderr and "plain34" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_arguments_are_one_line_errors(tmp_path):
    proc = run_module("export.transfer", "--from", "torch", "--to", "keras", "--model", "resnet20",
                      "--out", tmp_path / "x.pt", "--random", "0", check=False)
    assert proc.returncode == 2 and "x.pt is not a keras weight file" in proc.stderr
    proc = run_module("export.transfer", "--from", "torch", "--to", "keras", "--out", tmp_path / "x.keras",
                      "--src", tmp_path / "missing.pt", check=False)
    assert proc.returncode == 2 and "missing.pt does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
