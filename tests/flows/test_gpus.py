"""The machine-wide GPU slot pool (flows/gpus.py): device lists, exclusive slots across threads and processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flows.gpus import GpuConfigError, gpu_devices, gpu_slot, holders, lock_dir, main, parse_gpu_list
from tests.flows.builders import REPO


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0,1", ("0", "1")),
        (" 2 , 3 ", ("2", "3")),
        ("none", ()),
        ("None", ()),
        ("", ()),
        ("GPU-8f1c2e3a-0b1c-4d5e-9f00-123456789abc", ("GPU-8f1c2e3a-0b1c-4d5e-9f00-123456789abc",)),
        ("MIG-GPU-8f1c/1/0", ("MIG-GPU-8f1c/1/0",)),
    ],
)
def test_parse_gpu_list(value, expected):
    assert parse_gpu_list(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [("0,,1", "empty entry"), ("0,1,", "empty entry"), ("0 1", "not a device id"), ("0,0", "more than once")],
)
def test_parse_gpu_list_errors_name_the_variable(value, message):
    with pytest.raises(GpuConfigError, match=message) as err:
        parse_gpu_list(value)
    assert "FOURD_GPUS" in str(err.value)


def test_device_sources_in_order(monkeypatch, tmp_path):
    assert gpu_devices({"FOURD_GPUS": "3", "CUDA_VISIBLE_DEVICES": "0,1"}) == ("3",)
    assert gpu_devices({"FOURD_GPUS": "none", "CUDA_VISIBLE_DEVICES": "0,1"}) == ()
    assert gpu_devices({"CUDA_VISIBLE_DEVICES": "2,3"}) == ("2", "3")
    assert gpu_devices({"CUDA_VISIBLE_DEVICES": ""}) == ()
    assert gpu_devices({"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == ("1",)  # CUDA stops at the first invalid entry
    with pytest.raises(GpuConfigError, match="FOURD_GPUS"):
        gpu_devices({"FOURD_GPUS": "0,,1"})
    # Neither variable: nvidia-smi -L decides; a fake one on PATH lists two GPUs and a MIG device of the first.
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\necho '  MIG 1g.10gb Device 0: (UUID: MIG-a)'\n"
        "echo 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n"
    )
    fake.chmod(0o755)
    assert gpu_devices({"PATH": str(fake.parent)}) == ()  # env is read, not the process's PATH
    monkeypatch.setenv("PATH", str(fake.parent))
    assert gpu_devices({}) == ("0", "1")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert gpu_devices({}) == ()


def test_no_gpus_yields_none_without_touching_the_lock_dir(tmp_path):
    with gpu_slot("x", devices=(), directory=tmp_path / "locks") as dev:
        assert dev is None
    assert not (tmp_path / "locks").exists()


def test_two_holders_get_different_devices_and_a_third_waits(tmp_path):
    pool = ("0", "1")
    third_got: list[str] = []
    with contextlib.ExitStack() as first, contextlib.ExitStack() as second:
        a = first.enter_context(gpu_slot("a", pool, directory=tmp_path))
        b = second.enter_context(gpu_slot("b", pool, directory=tmp_path))
        assert {a, b} == {"0", "1"}
        assert holders(pool, tmp_path)[a]["label"] == "a" and holders(pool, tmp_path)[b]["label"] == "b"

        def third() -> None:
            with gpu_slot("c", pool, directory=tmp_path, poll_s=0.02) as c:
                third_got.append(c)

        t = threading.Thread(target=third)
        t.start()
        time.sleep(0.3)
        assert third_got == []  # both devices are held: it waits
        second.close()  # b releases its device; a still holds the other
        t.join(5)
        assert third_got == [b]
        now = holders(pool, tmp_path)
        assert now[b] is None and now[a]["label"] == "a"  # c's slot was released when its block ended
    assert holders(pool, tmp_path) == {"0": None, "1": None}


def test_a_slot_is_freed_when_its_holder_process_is_killed(tmp_path):
    code = (
        "import sys, time\n"
        "from flows.gpus import gpu_slot\n"
        f"with gpu_slot('holder', ('0',), directory=__import__('pathlib').Path({str(tmp_path)!r})) as d:\n"
        "    print(d, flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "0"
        assert holders(("0",), tmp_path)["0"]["pid"] == proc.pid
        got: list[str] = []
        t = threading.Thread(target=lambda: got.append(_take_once(tmp_path)))
        t.start()
        time.sleep(0.3)
        assert got == []  # held by the other process
        os.kill(proc.pid, signal.SIGKILL)
        t.join(5)
        assert got == ["0"]
    finally:
        proc.kill()
        proc.wait()


def _take_once(directory: Path) -> str:
    with gpu_slot("waiter", ("0",), directory=directory, poll_s=0.02) as dev:
        return dev


def test_lock_dir_default_and_override(tmp_path):
    assert lock_dir({"FOURD_GPU_LOCK_DIR": str(tmp_path / "l")}) == tmp_path / "l" and (tmp_path / "l").is_dir()
    default = lock_dir({})
    assert default.name == f"fourd-gpus-{os.getuid()}" and default.is_dir()


def test_cli_counts_slots(monkeypatch, capsys):
    monkeypatch.setenv("FOURD_GPUS", "0,1,2")
    assert main(["--count"]) == 0 and capsys.readouterr().out.strip() == "3"
    monkeypatch.setenv("FOURD_GPUS", "none")
    assert main(["--count"]) == 0 and capsys.readouterr().out.strip() == "1"
    monkeypatch.setenv("FOURD_GPUS", "0 1")
    assert main([]) == 1 and "not a device id" in capsys.readouterr().err
