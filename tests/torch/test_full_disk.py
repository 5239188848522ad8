"""A real full disk in the middle of a torch run (a small tmpfs; skipped where it cannot be mounted): one line that
names the file and the space left, the epoch-1 files kept, and the resume finishes once space is freed. Until now
``torch.save`` said ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``, with a traceback."""

import sys

from shared import runs
from tests.conftest import run_module
from tests.disk import small_disk
from tests.train_helpers import assert_full_disk_kept_epoch_1, fill_the_disk_in_second_epoch
from tests.trainer_contract import base_args


def test_a_full_disk_in_the_second_epoch_is_one_line_and_the_resume_finishes(trainer, data_dir, tmp_path):
    with small_disk(tmp_path / "disk", 32 << 20) as disk:
        out = disk / "run"
        cmd = [sys.executable, "-m", trainer.module, *base_args(data_dir, out, "--epochs", "2")]
        assert_full_disk_kept_epoch_1(fill_the_disk_in_second_epoch(cmd, disk, out, trainer.framework), out,
                                      trainer.framework)
        assert trainer.checkpoint_progress(out) == (1, 20)
        resumed = run_module(trainer.module, "--resume", out, "--no-progress", "--device", "cpu")
        assert "resuming at epoch 2" in resumed.stdout and runs.read_run(out)["finished"]
