"""
TensorBoard scalars of a training run (``genesis-grad train --tensorboard DIR``), beside tqdm and the PNG plots.

One point per training window, against the global simulated env-steps (the x axis of ``plot_training_curve``, so that
runs with different batch sizes or process counts line up): ``train/loss``, ``train/lateral_rms`` (m),
``train/grad_norm`` (before clipping) and ``train/env_steps_per_s`` (throughput of the window, all ranks together).
"""

from __future__ import annotations

from pathlib import Path

# Tag of each scalar, by the key of the record ``train_gradient`` passes to ``on_window``.
SCALARS = {
    "loss": "train/loss",
    "lateral_rms": "train/lateral_rms",
    "grad_norm": "train/grad_norm",
    "env_steps_per_s": "train/env_steps_per_s",
}


class TensorBoardLogger:
    """
    ``on_window`` callback of ``train_gradient`` writing the window's scalars to an event file in ``log_dir``.

    Parameters
    ----------
    log_dir : str or Path
        Directory of the event files (created if missing).
    """

    def __init__(self, log_dir: str | Path):
        # Imported here: TensorBoard is an optional dependency and slow to import.
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def __call__(self, record: dict) -> None:
        step = int(record["env_steps"])
        for key, tag in SCALARS.items():
            self.writer.add_scalar(tag, float(record[key]), global_step=step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
