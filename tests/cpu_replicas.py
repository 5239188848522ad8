"""Run ``python -m tests.cpu_replicas N MODULE ARGS...``: MODULE as ``python -m`` would, in a TensorFlow process
whose CPU is split into N logical devices (configured before TensorFlow starts, as it must be), so
``--strategy mirrored`` trains N replicas on the CPU."""

from __future__ import annotations

import runpy
import sys

if __name__ == "__main__":
    import tensorflow as tf

    replicas, module = int(sys.argv[1]), sys.argv[2]
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
