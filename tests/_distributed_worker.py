"""
Helper of tests/test_distributed.py, run as a script in a fresh interpreter: train a few windows with ``world_size``
processes over a global batch of ``n_envs`` environments and save the final parameters (rank 0) with ``torch.save``.

``--no-reduce`` replaces the all-reduce by a local average (each rank steps on its own half of the batch): the check
that the test can fail.
"""

import argparse
import os
import sys

import torch


def run(n_envs: int, iterations: int, horizon: int, out: str, no_reduce: bool, tensorboard: str | None) -> None:
    from genesis_grad.steering import distributed
    from genesis_grad.steering import paths as P

    world = int(os.environ.get("WORLD_SIZE", "1"))
    ddp = distributed.join(world)
    if no_reduce and ddp is not None:
        distributed.Distributed.average_window = lambda self, params, loss, lat: (loss, lat)

    from genesis_grad.steering.policy import SteeringMLP
    from genesis_grad.steering.sim import SteeringSim
    from genesis_grad.steering.train import TrainConfig, train_gradient

    sim = SteeringSim(n_envs=n_envs // world, requires_grad=True)
    torch.manual_seed(0)
    policy = SteeringMLP()
    if ddp is not None:
        ddp.broadcast_parameters(policy)
    paths = [P.make_path("sine", speed=1.5), P.make_path("lane_change", speed=1.5)]
    cfg = TrainConfig(horizon=horizon, seed=3)
    logger = None
    if tensorboard and (ddp is None or ddp.is_main):
        from genesis_grad.steering.tensorboard_log import TensorBoardLogger

        logger = TensorBoardLogger(tensorboard)
    history = train_gradient(
        policy, sim, paths, iterations=iterations, cfg=cfg, progress=False, dist=ddp, on_window=logger
    )
    if logger is not None:
        logger.close()
    if ddp is None or ddp.is_main:
        torch.save(
            {"params": {k: v.detach().clone() for k, v in policy.state_dict().items()}, "history": history.as_dict()},
            out,
        )
    distributed.leave(ddp)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--n-envs", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-reduce", action="store_true")
    parser.add_argument("--tensorboard", default=None)
    a = parser.parse_args(argv)
    args = (a.n_envs, a.iterations, a.horizon, a.out, a.no_reduce, a.tensorboard)
    if a.nproc > 1:
        from genesis_grad.steering import distributed

        distributed.spawn(a.nproc, run, args)
    else:
        run(*args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
