"""
Data-parallel gradient training over several processes (``genesis-grad train --nproc N``, or under ``torchrun``).

Each process (rank) builds its own batched scene with ``n_envs = global_envs / world_size`` environments. All ranks
draw every window from one generator seeded alike, sample the start states of the whole global batch, and keep their
contiguous slice of it (``Distributed.local_slice``): N processes with B/N environments each see exactly the windows
that one process with B environments sees. After the backward pass the gradients, the window loss and the lateral mean
square are averaged over the ranks in one all-reduce (``Distributed.average_window``), before the non-finite guard,
the gradient clipping and Adam: every rank then takes the same step as the single process would, which with equal
slices and a per-environment mean loss is the gradient of the global-batch mean. Rank 0 alone writes checkpoints,
plots, logs and the progress bar.

Process groups use ``gloo`` for CPU tensors and, where CUDA and NCCL are available, ``nccl`` for CUDA tensors (one
``"cpu:gloo,cuda:nccl"`` group, torch dispatches on the tensor's device). The rendezvous follows torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): under torchrun those are used as given;
``spawn`` sets them for processes it starts itself.

The on-disk kernel cache
------------------------
Genesis compiles its kernels with Quadrants, which caches them under ``QD_OFFLINE_CACHE_FILE_PATH`` (default
``~/.cache/quadrants/qdcache``) for every process that uses the directory, with little coordination between them
(Quadrants 1.3.3; sources in ``quadrants/compilation_manager/kernel_compilation_manager.cpp``,
``quadrants/util/lock.h``, ``quadrants/util/offline_cache.h``, ``quadrants/lang/_fast_caching/``):

1. Two halves, written at different times. The Python-side "fastcache" (``python_side_cache/``: per kernel an L1
   entry of the dataclass fields it reads and L2 entries mapping a narrowed argument hash to the compiled artifact's
   key) is written by each process as it compiles (``src_hasher.store``, atomic replace). The artifacts themselves
   (``kernel_compilation_manager/T<key>.qdc`` and the index ``qdcache.qdb``) are written only when the runtime shuts
   down (``KernelCompilationManager::dump`` from ``gs.destroy()`` / exit). Measured on the car scene from an empty
   cache: 52 fastcache entries and 0 artifacts after ``scene.build``, 60 artifacts after ``gs.destroy()``. Until then
   the other processes find fastcache entries whose artifacts are not there, and compile again.
2. A lock that gives up. ``lock_with_file`` creates ``qdcache.lock`` with ``O_CREAT | O_EXCL``, retries 5 times 50 ms
   apart, then fails: the index is then not read at start-up (everything recompiled), ``dump`` throws away the
   process's new kernels, the cleaner skips. Seen here with 4 processes on one cache: "Lock .../qdcache.lock failed"
   at exit from ``dump`` and from ``CacheCleaner::run``. A process killed while holding the lock leaves it behind, and
   every later process of every job then runs without the cache.
3. Unlocked readers. ``dump`` rewrites each ``.qdc`` in place (``std::ofstream`` truncation) while other processes load
   them lazily, without the lock (``load_ckd``); the SHA-256 trailer of ``CompiledKernelDataFile::load`` rejects a
   torn file, which is then recompiled. The L1 entry is grown by an unlocked read-modify-write
   (``persist_l1_and_set_l2_key``): the last writer wins and the others' fields are lost (cache misses).
4. A cache holds every configuration any process compiled (plain and differentiable scenes, stock Genesis, earlier
   plugin versions, the patched tree of ``make check-upstream``). Their memory layouts do not mix up: the L2 key
   hashes each array a kernel reads with its gradient storage (the ``-g`` tag in ``args_hasher.py``), and
   ``tests/test_kernel_cache.py`` runs a plain and a differentiable scene from one fresh cache in both orders (with
   the tag taken out of the key, the second process segfaults in a kernel launch).

No crash of a shared cache was reproduced here (four attempts: 2 processes building and back-propagating through the
differentiable car scene at once on an empty cache; 2 more started while a first pair was writing at exit; plain and
differentiable scenes in turn on one cache; 2 processes at once on a copy of this machine's shared ``~/.cache`` cache,
158 kernels from other runs): they produced the lock failures of 2. and recompilations. 1. to 3. make concurrent use
of one cache unreliable in any case.

So the ranks of a job never share a cache directory: ``use_private_kernel_cache`` gives rank 0 the configured cache
(warm from single-process runs, and written by no other process of the job) and every other rank a directory of its
own, ``<cache>-rank<r>``, warm from the previous run of the same size. It runs before Genesis is initialized
(Quadrants reads the variable in ``qd.init``). The first run with N processes compiles once per rank, in parallel.
Letting rank 0 build first behind a barrier would not spare the others that: by 1. the artifacts reach the disk only
when rank 0 shuts down, and the reverse kernels are compiled at the first backward pass, after any build barrier.
Independent jobs running at the same time should also use distinct ``QD_OFFLINE_CACHE_FILE_PATH``.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from .error_state import TorchReference

if TYPE_CHECKING:
    from .sim import StartState

CACHE_ENV_VAR = "QD_OFFLINE_CACHE_FILE_PATH"


def default_kernel_cache_dir() -> str:
    """The directory Quadrants caches compiled kernels in: ``$QD_OFFLINE_CACHE_FILE_PATH``, else its default."""
    if os.environ.get(CACHE_ENV_VAR):
        return os.environ[CACHE_ENV_VAR]
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "quadrants", "qdcache")


def use_private_kernel_cache(rank: int) -> str:
    """
    Point this process's Quadrants kernel cache at a directory no other rank of the job writes (see the module
    docstring): rank 0 keeps the configured one, rank r > 0 uses ``<cache>-rank<r>``. Call before Genesis is
    initialized. Returns the directory.
    """
    base = default_kernel_cache_dir().rstrip(os.sep)
    path = base if rank == 0 else f"{base}-rank{rank}"
    os.environ[CACHE_ENV_VAR] = path
    return path


@dataclass
class Distributed:
    """This process's place in a data-parallel job, and the collectives the trainer needs."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, plots and logs."""
        return self.rank == 0

    def local_slice(self, reference: TorchReference, start: StartState) -> tuple[TorchReference, StartState]:
        """This rank's contiguous share of a global batch of windows (the global batch size must divide evenly)."""
        n_global = reference.n_envs
        if n_global % self.world_size:
            raise ValueError(f"a batch of {n_global} environments does not split over {self.world_size} processes")
        n = n_global // self.world_size
        sl = slice(self.rank * n, (self.rank + 1) * n)
        dtype = reference["s"].dtype
        device = reference["s"].device
        local_ref = TorchReference(reference.paths, reference.path_idx[sl], device=device, dtype=dtype)
        local_start = type(start)(**{k: v[sl] for k, v in vars(start).items()})
        return local_ref, local_start

    def average_window(
        self, parameters: Iterable[torch.nn.Parameter], loss: torch.Tensor, lateral_ms: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Average the gradients (in place), the window loss and the lateral mean square over the ranks.

        One flat all-reduce carries everything. A rank whose loss was not finite skipped its backward pass: its missing
        gradients count as zeros and its loss makes the averaged loss non-finite, so that every rank skips the window
        together (the non-finite guard then sees the same values everywhere).
        """
        params = list(parameters)
        parts = [p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1) for p in params]
        dtype = params[0].dtype if params else loss.dtype
        parts += [loss.detach().reshape(1).to(dtype), lateral_ms.detach().reshape(1).to(dtype)]
        flat = torch.cat(parts)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n
        return flat[offset], flat[offset + 1]

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Make every rank start from rank 0's weights (as DistributedDataParallel does)."""
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)

    def barrier(self) -> None:
        dist.barrier()


def _process_group_backend() -> str:
    # gloo for CPU tensors always (the policy and the CPU scene), NCCL for CUDA tensors where it exists.
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init_from_env() -> Distributed | None:
    """
    Join the process group described by torchrun's environment variables, or return None when ``WORLD_SIZE`` is
    unset or 1 (a single process, nothing to synchronize). Idempotent.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    rank = int(os.environ["RANK"])
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % max(torch.cuda.device_count(), 1))
        dist.init_process_group(backend=_process_group_backend(), rank=rank, world_size=world_size)
    return Distributed(rank=rank, world_size=world_size)


def shutdown() -> None:
    """Leave the process group (if any)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local_rank: int, world_size: int, fn: Callable, args: tuple) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size))
    fn(*args)


def spawn(nproc: int, fn: Callable, args: tuple = ()) -> None:
    """
    Run ``fn(*args)`` in ``nproc`` fresh processes on this machine, with torchrun's environment variables set, and
    wait for them (an exception in one rank is re-raised here). ``fn`` calls ``init_from_env`` itself. ``fn`` and
    ``args`` must be picklable (the processes are started with ``spawn``: Genesis does not survive ``fork``).
    """
    import torch.multiprocessing as mp

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    mp.spawn(_worker, args=(nproc, fn, args), nprocs=nproc, join=True)


# ------------------------------------------------------------------ the `genesis-grad train --nproc N` command


def is_rank() -> bool:
    """True when a launcher (torchrun, or ``spawn``) started this process as one rank of a job."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_nproc(nproc: int | None, n_envs: int) -> tuple[int, str]:
    """
    The job's process count from ``--nproc`` and the launcher's environment, and an error message ('' if none): the
    global batch of ``n_envs`` environments must split evenly, and under torchrun ``--nproc`` must agree with it.
    """
    launched = int(os.environ["WORLD_SIZE"]) if is_rank() else None
    if nproc is not None and launched is not None and nproc != launched:
        return nproc, f"--nproc {nproc}, but the launcher started {launched} processes (omit --nproc under torchrun)"
    nproc = nproc or launched or 1
    if n_envs % nproc:
        fit = (n_envs // nproc + 1) * nproc
        return nproc, (
            f"--n-envs {n_envs} does not split over {nproc} processes: give --n-envs a multiple of {nproc} "
            f"(e.g. {fit}), the global batch of all processes together"
        )
    return nproc, ""


def spawn_command(nproc: int, command: Callable, args) -> int:
    """Run the subcommand handler ``command(args)`` as ``nproc`` ranks; 1 and one line on stderr if a rank failed."""
    try:
        spawn(nproc, command, (args,))
    except Exception as exc:  # torch.multiprocessing re-raises a rank's exception with its traceback as text
        last = str(exc).strip().splitlines()
        print(f"genesis-grad train: error: a training process failed: {last[-1] if last else exc}", file=sys.stderr)
        return 1
    return 0


def join(nproc: int) -> Distributed | None:
    """
    In a rank of a job: give it its own kernel cache (before Genesis initializes) and join the process group. None
    for a single process.
    """
    if nproc <= 1 and not is_rank():
        return None
    use_private_kernel_cache(int(os.environ["RANK"]))
    return init_from_env()


def leave(ddp: Distributed | None) -> int:
    """Leave the job's process group (if any); returns the exit status 0."""
    if ddp is not None:
        shutdown()
    return 0
