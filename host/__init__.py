"""The host driver and the ``microtrain`` CLI.

    import host
    dev = host.open("emu://hnpu-v2")
    model = dev.deploy(host.nn.Sequential(host.nn.Linear(4, 3)), precision="dfxp8+sr")
    result = model.train_step(x, y)

``open`` (a ``Device``), ``nn`` (layer specs), ``optim`` (SGD), ``errors`` (typed errors),
``Model`` and ``Precision``; ``discovery`` finds USB serial adapters.
"""

from host import errors, nn, optim
from host.device import Device, open
from host.model import Model, Precision, StepResult

__all__ = ["Device", "Model", "Precision", "StepResult", "errors", "nn", "open", "optim"]
