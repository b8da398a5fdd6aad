"""``percepbench train`` under DDP: two CPU processes (gloo) against one process with the same global batch.

Tolerance: 1e-5 on per-step losses, validation scores and final trainable weights (the two layouts sum the
same terms in a different order; LoRA dropout is 0 so that neither draws random masks, whose stream depends
on the process layout).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training import register_tiny, tiny_config, write_data

from percepbench.training import train

from conftest import PYTHON, REPO

TOL = 1e-5
WEIGHTS = {"lora": "adapter_model.safetensors", "mlp": "mlp_head.safetensors"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(mode: str) -> dict:
    return {"lora_dropout": 0.0, "batch_size": 4, "mode": mode, "hidden": 16}


def _worker(rank: int, world: int, port: int, out: str, data: str, report: str, mode: str) -> None:
    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    register_tiny()
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = train(tiny_config(Path(out), Path(data), **_settings(mode)))
    finally:
        dist.destroy_process_group()
    Path(report, f"rank{rank}.json").write_text(json.dumps(
        {"losses": result.losses, "val_scores": result.val_scores, "steps": result.steps}))


def _same_weights(a: Path, b: Path, name: str) -> None:
    ours, theirs = load_file(str(a / "last" / name)), load_file(str(b / "last" / name))
    assert set(ours) == set(theirs)
    for k in theirs:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=TOL)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    register_tiny()
    return write_data(tmp_path_factory.mktemp("ddp_data"), n_train=8, n_val=3)  # 3 val items: uneven shards


@pytest.mark.parametrize("mode", ["lora", "mlp"])
def test_two_gloo_processes_match_one_process(data, tmp_path, mode):
    import torch.multiprocessing as mp

    single = train(tiny_config(tmp_path / "single", data, **_settings(mode)))
    report = tmp_path / "report"
    report.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp"), str(data), str(report), mode), nprocs=2,
             join=True)
    ranks = [json.loads((report / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:  # every rank sees the global loss and the gathered validation score
        assert r["steps"] == single.steps == 4
        assert r["losses"] == pytest.approx(single.losses, abs=TOL)
        assert r["val_scores"] == pytest.approx(single.val_scores, abs=TOL)
    _same_weights(tmp_path / "ddp", tmp_path / "single", WEIGHTS[mode])
    # rank 0 alone wrote the log: one line per step and per epoch
    assert len((tmp_path / "ddp" / "log.jsonl").read_text().splitlines()) == 4 + 2
    assert json.loads((tmp_path / "ddp" / "train_config.json").read_text())["world_size"] == 2


def test_torchrun_cli(data, tmp_path):
    """``torchrun --nproc_per_node 2`` on the CLI joins a gloo group by itself and trains as one process."""
    train(tiny_config(tmp_path / "single", data, **_settings("lora")))
    script = tmp_path / "cli.py"
    script.write_text(f"import sys; sys.path[:0] = [{str(REPO / 'tests')!r}]\n"
                      "import test_training; test_training.register_tiny()\n"
                      "from percepbench.cli import main; sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         str(script), "train", "--out", str(out), "--data-root", str(data), "--backbones", "tiny_test_vit",
         "--random-weights", "--epochs", "2", "--batch-size", "4", "--lora-r", "4", "--lr", "0.01",
         "--lora-dropout", "0", "-q"], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("done: 2 epoch(s), 4 step(s)") == 1  # printed by rank 0 only
    _same_weights(out, tmp_path / "single", WEIGHTS["lora"])
