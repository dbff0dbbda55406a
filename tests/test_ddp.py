"""Distributed data-parallel training: two CPU processes with the gloo backend, set up the way torchrun does it
(RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT in the environment)."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_data import write_tiny_cache

from reidkit.typedconfig import from_mapping, to_dict
from reidtrain.config import TrainConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from reidtrain.train import train
    result = train(from_mapping(TrainConfig, cfg), progress=False)
    torch.save(result.model.state_dict(), Path(out) / f"rank{rank}.pt")
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"world_size": result.world_size,
                                                            "history": result.history}))


@pytest.mark.slow
def test_two_process_gloo_training_keeps_ranks_in_sync(tmp_path):
    cache = write_tiny_cache(tmp_path / "cache", train_ids=4, per_id=4)
    cfg = TrainConfig(cache=cache, out=tmp_path / "run", model="intra-inter", body_size=(64, 32),
                      part_size=(16, 32), batch_size=4, epochs=1, workers=0, lr=0.02, tensorboard=False)
    mp.spawn(_rank_main, args=(2, _free_port(), to_dict(cfg), str(tmp_path)), nprocs=2, join=True)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "the two ranks' weights diverged"
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    # the epoch covered all 16 images: 2 ranks x 2 batches of 4 (metrics reduced over the ranks on rank 0)
    assert [row["images"] for row in r0["history"]] == [16] and r1["history"] == []
    # only rank 0 wrote the run directory; its checkpoint holds the synchronised weights
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["meta"]["world_size"] == 2
    assert all(torch.equal(ckpt["model"][k], w0[k]) for k in w0)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
