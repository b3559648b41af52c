"""glibc's allocator keeping a CPU step's freed memory (`transformers_valor.training.cpu_memory`): the settings take
effect in a fresh process, and the training loop applies them on the CPU unless told not to."""

import json
import platform
import subprocess
import sys

import pytest

from training_helpers import reset_accelerate, tiny_run
from transformers_valor.training import config_from_dict, train
from transformers_valor.training.cpu_memory import keep_freed_cpu_memory

# Run in a fresh interpreter: the allocator's settings last for the whole process.
ALLOCATION_PROBE = """
import ctypes, ctypes.util, json, sys
import torch
from transformers_valor.training.cpu_memory import keep_freed_cpu_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_cpu_memory() if sys.argv[1] == "keep" else None
before = libc.mallinfo2().hblkhd
block = torch.ones(4 * 1024 * 1024)  # 16 MiB
mmapped = libc.mallinfo2().hblkhd - before
del block
print(json.dumps({"applied": applied, "mmapped": mmapped, "free_in_heap": libc.mallinfo2().fordblks}))
"""

MIB = 1024 * 1024


def probe_allocation(mode: str) -> dict:
    """Where a fresh process's 16 MiB tensor lives and what its heap holds free after it is deleted."""
    result = subprocess.run(
        [sys.executable, "-c", ALLOCATION_PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_freed_blocks_stay_in_the_heap():
    if platform.libc_ver()[0] != "glibc":  # the settings are glibc's; elsewhere nothing is changed
        assert keep_freed_cpu_memory() is False
        return
    default, kept = probe_allocation("default"), probe_allocation("keep")
    assert default["mmapped"] >= 16 * MIB and default["free_in_heap"] < 16 * MIB, default
    assert kept["applied"] is True and kept["mmapped"] == 0 and kept["free_in_heap"] >= 16 * MIB, kept


@pytest.mark.parametrize("flag", [True, False])
def test_training_loop_keeps_freed_memory_on_the_cpu_unless_disabled(
    flag, tiny_corpus, tiny_processor_dir, tmp_path, monkeypatch
):
    import transformers_valor.training.loop as loop_module

    calls = []
    monkeypatch.setattr(loop_module, "keep_freed_cpu_memory", lambda: calls.append(True) or True)
    reset_accelerate()
    values = tiny_run(
        tiny_corpus,
        tiny_processor_dir,
        tmp_path / "run",
        training={"max_steps": 1, "keep_freed_cpu_memory": flag},
    )
    train(config_from_dict(values))
    reset_accelerate()
    assert calls == ([True] if flag else [])
