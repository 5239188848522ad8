"""The trainer contract (tests/trainer_contract.py) on the torch trainer: this suite's ``trainer`` fixture."""

from tests.trainer_contract import *  # noqa: F403  (the shared tests and their fixtures, collected here)
