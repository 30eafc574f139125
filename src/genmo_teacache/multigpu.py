"""Multi-GPU generation through Ray: ``TeaCacheMultiGPUPipeline`` (upstream ``MochiMultiGPUPipeline``).

One Ray actor per rank (one GPU each, or one CPU each with ``device_type="cpu"`` for tests): NCCL (gloo on
CPU) process group, our factory and sampler in every rank. Two ways to use N ranks, which combine:

* context parallelism (upstream's): the visual tokens of every DiT call split over the ranks of a group, two
  all-to-alls and an all-gather per block; DiT under FSDP FULL_SHARD within the group;
* CFG-parallel (``cfg_parallel=True``): the cond branch on one half of the ranks and the uncond branch on the
  other, each step's outputs exchanged once (one broadcast per branch); with 2 GPUs each holds the whole DiT.
  2 x C ranks = 2 CFG groups of C context-parallel ranks (rank r: branch r // C, context rank r % C).

Every rank takes the same cache decision because the sampler sums the indicator over the context-parallel
group and the CFG pair before the threshold test. T5 is sharded over all ranks (they all encode both prompts).

Under FSDP, block 0's parameters are flat shards outside its forward, so the block-0 modulation the indicator
needs comes from a replicated copy gathered once after wrapping (151 MB at full size).

A rank that raises stops the run: the driver waits on all ranks, and on the first error kills every actor
(a rank stuck in a collective would otherwise hang) and re-raises; collectives also time out.

The console shows what one process shows: Ray's own messages and the ranks' output are not forwarded (a cluster
this pipeline starts logs errors only), and rank 0's progress bar is drawn by the driver (its text is relayed
through a Ray queue), so that nothing of a rank prints after the summary.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import logging
import os
import socket
import sys
from functools import partial
from typing import Any

import ray
import torch
import torch.distributed as dist
import torch.nn as nn

from genmo_teacache.caches import CacheConfig
from genmo_teacache.parallel import check_divisible, check_layout, check_ray_address
from genmo_teacache.pipelines import GenerationOutput, TeaCacheSingleGPUPipeline, fsdp_wrap
from genmo_teacache.upstream import cp, progress_bar
from genmo_teacache.upstream import pipelines as up

log = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT_S = int(os.environ.get("GENMO_TEACACHE_COLLECTIVE_TIMEOUT_S", "600"))
RANK_START_TIMEOUT_S = int(os.environ.get("GENMO_TEACACHE_RANK_START_TIMEOUT_S", "300"))
CONSOLE_POLL_S = 0.2  # how often the driver draws rank 0's progress while it waits


class _Relay(io.TextIOBase):
    """A rank's stderr that sends its text to the driver's console queue (rank 0's progress bar)."""

    def __init__(self, queue: Any):
        self.queue = queue

    def write(self, text: str) -> int:
        if text:
            self.queue.put_nowait(text)
        return len(text)


def _drain(queue: Any) -> None:
    """Print what the ranks sent to the driver's console (stderr, as a progress bar of one process)."""
    if queue is None:
        return
    size = queue.qsize()
    if size:
        sys.stderr.write("".join(queue.get_nowait_batch(size)))
        sys.stderr.flush()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def replicate_block0_modulation(dit: nn.Module) -> None:
    """Gather block 0's ``mod_x`` once (collective: every rank calls this) and keep an unsharded copy, outside
    FSDP's management, for the indicator."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    inner = dit.module if isinstance(dit, FSDP) else dit
    dit(phase="noop")  # FSDP initialises its root on the first forward; block 0 must not be taken for a root
    block0 = inner.blocks[0]
    with FSDP.summon_full_params(block0, writeback=False):
        src = block0.module.mod_x if isinstance(block0, FSDP) else block0.mod_x
        copy = nn.Linear(src.in_features, src.out_features, device=src.weight.device, dtype=src.weight.dtype)
        with torch.no_grad():
            copy.weight.copy_(src.weight)
            copy.bias.copy_(src.bias)
    object.__setattr__(inner, "_replicated_mod_x0", copy.eval())  # not registered: FSDP and state_dict ignore it


class RankContext:
    """What one Ray actor holds: its rank's models. Created cheaply; ``setup`` joins the process group."""

    def __init__(self, *, factories: dict[str, Any], rank: int, world_size: int, device_type: str,
                 cfg_parallel: bool = False):
        self.factories, self.rank, self.world_size, self.device_type = factories, rank, world_size, device_type
        self.cfg_size = 2 if cfg_parallel else 1
        self.cp_size = world_size // self.cfg_size
        self.warmed: set = set()  # kept across generations, as the single-device pipeline keeps it

    def address(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), _free_port()

    def setup(self, master_addr: str, master_port: int) -> None:
        self.device = torch.device("cuda:0") if self.device_type == "cuda" else torch.device("cpu")
        if self.device_type == "cuda":
            torch.cuda.set_device(self.device)
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = master_addr, str(master_port)
        dist.init_process_group("nccl" if self.device_type == "cuda" else "gloo", rank=self.rank,
                                world_size=self.world_size, timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
                                device_id=self.device if self.device_type == "cuda" else None)
        cp_group, self.branch_group = self._groups()
        if self.cp_size > 1:
            cp.set_cp_group(cp_group, dist.get_process_group_ranks(cp_group), self.rank)
        f = self.factories
        dit_factory = f["dit_factory"]
        self.tokenizer = up.t5_tokenizer(f["text_encoder_factory"].model_dir)
        self.text_encoder = self._text_encoder(f["text_encoder_factory"])
        self.dit = dit_factory.get_model(local_rank=self.rank % self.cp_size, device_id=self._device_id(),
                                         world_size=self.cp_size, all_ranks_load=self.device_type == "cpu",
                                         fsdp=partial(fsdp_wrap, device=self.device, process_group=cp_group))
        if self.cp_size > 1:
            replicate_block0_modulation(self.dit)
        self.decoder = f["decoder_factory"].get_model(local_rank=self.rank, device_id=self._device_id(),
                                                      world_size=self.world_size)

    def _groups(self) -> tuple[Any, Any]:
        """(this rank's context-parallel group, its CFG pair or None). Every rank creates every group, in the same
        order, as torch.distributed requires."""
        if self.cfg_size == 1:
            return dist.group.WORLD, None
        cp_groups = [dist.new_group(list(range(g * self.cp_size, (g + 1) * self.cp_size)))
                     for g in range(self.cfg_size)]
        pairs = [dist.new_group([c, c + self.cp_size]) for c in range(self.cp_size)]
        return cp_groups[self.rank // self.cp_size], pairs[self.rank % self.cp_size]

    def _device_id(self) -> int | str:
        return 0 if self.device_type == "cuda" else "cpu"

    def _text_encoder(self, factory) -> nn.Module:
        from transformers.models.t5.modeling_t5 import T5Block

        model = factory.load(torch.device("cpu"))
        policy = partial(up.transformer_auto_wrap_policy, transformer_layer_cls={T5Block})
        return fsdp_wrap(model, self.device, policy).eval()

    def generate(self, *, progress: bool, console: Any = None, **kwargs: Any) -> dict[str, Any]:
        """One video on this rank's models; ``console``: the driver's queue that rank 0's progress bar is drawn
        through (None: no progress bar on this rank)."""
        # the single-device pipeline's generate, on this rank's models (same timing and decoding code)
        pipe = TeaCacheSingleGPUPipeline.__new__(TeaCacheSingleGPUPipeline)
        pipe.device, pipe.cpu_offload, pipe.decode_type, pipe.decode_args = self.device, False, "full", {}
        pipe.low_memory = False
        pipe.tokenizer, pipe.text_encoder, pipe.dit, pipe.decoder = (self.tokenizer, self.text_encoder, self.dit,
                                                                     self.decoder)
        pipe.warmed = self.warmed
        shown = progress and console is not None
        relay = contextlib.redirect_stderr(_Relay(console)) if shown else contextlib.nullcontext()
        with relay, progress_bar(type="tqdm" if shown else "none", enabled=shown):
            out = pipe.generate(progress=shown, branch_group=self.branch_group, **kwargs)
        return {"out": out if self.rank == 0 else None, "rank": self.rank,
                "decisions": [r.computed for r in out.report.steps], "raws": [r.raw for r in out.report.steps],
                "branches": [r.branches for r in out.report.steps]}

    def run(self, fn, **kwargs: Any) -> Any:
        """Run ``fn(self, **kwargs)`` on this rank (as upstream's ``MultiGPUContext.run``): benchmarks."""
        return fn(self, **kwargs)

    def fail(self) -> None:
        """For tests: raise on this rank."""
        raise RuntimeError(f"rank {self.rank} failed on purpose")


class TeaCacheMultiGPUPipeline(up.MochiMultiGPUPipeline):
    """Upstream's multi-GPU pipeline with our factory and caching sampler in every rank.

    ``device_type="cpu"`` runs the same thing on CPU ranks (gloo, one CPU per actor) for tests.
    ``ray_address`` joins an existing cluster; otherwise a local one is started and shut down by ``close``.
    ``cfg_parallel``: the CFG branches on two halves of the ranks (see the module docstring).
    """

    def __init__(self, *, text_encoder_factory, dit_factory, decoder_factory, world_size: int,
                 device_type: str = "cuda", ray_address: str | None = None, cfg_parallel: bool = False):
        check_layout(world_size, cfg_parallel)
        cp_size = world_size // 2 if cfg_parallel else world_size
        num_heads = dit_factory.kwargs["model_kwargs"].get("num_heads", 24)
        if num_heads % cp_size:
            raise ValueError(f"{num_heads} attention heads do not divide over {cp_size} context-parallel ranks")
        self.world_size, self.device_type, self.num_heads = world_size, device_type, num_heads
        self.cfg_parallel, self.cp_size = cfg_parallel, cp_size
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            check_ray_address(ray_address)  # ray.init would retry forever where nothing listens
            env = {k: v for k, v in os.environ.items() if k.startswith(("NCCL_", "TORCH_", "NVSHMEM_"))}
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                     runtime_env={"env_vars": env} if env else None,
                     **({"num_cpus": world_size} if device_type == "cpu" and ray_address is None else {}))
        if device_type == "cuda":
            gpus = int(ray.cluster_resources().get("GPU", 0))
            if gpus < world_size:
                self.close()
                raise ValueError(f"--num_gpus {world_size} asked for but the Ray cluster has {gpus} GPUs")
        factories = dict(text_encoder_factory=text_encoder_factory, dit_factory=dit_factory,
                         decoder_factory=decoder_factory)
        resources = {"num_gpus": 1} if device_type == "cuda" else {"num_cpus": 1, "num_gpus": 0}
        Remote = ray.remote(**resources)(RankContext)
        self.ctxs = [Remote.remote(factories=factories, rank=i, world_size=world_size, device_type=device_type,
                                   cfg_parallel=cfg_parallel) for i in range(world_size)]
        addresses = [ctx.address.remote() for ctx in self.ctxs]  # returns once the actor has started
        ready, _ = ray.wait(addresses, num_returns=world_size, timeout=RANK_START_TIMEOUT_S)
        if len(ready) < world_size:
            free = ray.available_resources()
            self.close()
            raise RuntimeError(f"only {len(ready)} of {world_size} ranks started within {RANK_START_TIMEOUT_S} s: "
                               f"each needs {resources} and the Ray cluster has {free} free; free them or lower "
                               f"--num_gpus")
        addr, port = ray.get(addresses[0])  # rank 0 hosts the process group's rendezvous
        self._wait([ctx.setup.remote(addr, port) for ctx in self.ctxs])

    def _wait(self, refs: list, console: Any = None) -> list:
        """ray.get on every rank, but on the first failure kill all ranks and raise (no hang); meanwhile what the
        ranks send to ``console`` is printed."""
        pending, done = list(refs), {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=CONSOLE_POLL_S if console else None)
            _drain(console)
            if not ready:
                continue
            try:
                done[ready[0]] = ray.get(ready[0])
            except Exception:
                self.close()
                raise
        return [done[r] for r in refs]

    def generate(self, *, batch_cfg: bool, prompt: str, negative_prompt: str, cache: CacheConfig,
                 progress: bool = True, **kwargs: Any) -> GenerationOutput:
        check_divisible(self.cp_size, num_heads=self.num_heads, width=kwargs["width"], height=kwargs["height"],
                        num_frames=kwargs["num_frames"])
        if self.cfg_parallel and batch_cfg:
            raise ValueError("CFG-parallel runs one CFG branch per rank: it cannot batch them (drop --batch_cfg)")
        from ray.util.queue import Queue

        console = Queue(actor_options={"num_cpus": 0}) if progress else None
        try:
            results = self._wait([ctx.generate.remote(batch_cfg=batch_cfg, prompt=prompt,
                                                      negative_prompt=negative_prompt, cache=cache, progress=progress,
                                                      console=console if i == 0 else None, **kwargs)
                                  for i, ctx in enumerate(self.ctxs)], console)
        finally:
            if console is not None:
                console.shutdown()
        decisions = {(tuple(r["decisions"]), tuple(map(tuple, r["branches"]))) for r in results}
        if len(decisions) != 1:  # cannot happen while the indicator is all-reduced; a loud check if it ever does
            raise RuntimeError(f"ranks took different cache decisions: {decisions}")
        self.rank_results = results
        return results[0]["out"]

    def __call__(self, **kwargs):
        return self.generate(cache=kwargs.pop("cache", None) or CacheConfig.baseline(), **kwargs).frames

    def close(self) -> None:
        for ctx in getattr(self, "ctxs", []):
            ray.kill(ctx)
        self.ctxs = []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
