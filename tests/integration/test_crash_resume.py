"""Crash consistency and --resume (issue 12 sections 2 and 3).

- A bounded SIGKILL loop against ``dllm2rec train`` (kills at seeded random instants and inside each phase of a
  checkpoint save) followed by ``--resume`` reaches exactly the uninterrupted run's metrics and log, each resume
  continuing from the last committed epoch (never from epoch 1).
- An incomplete or inconsistent run directory is refused in one line (exit 2) and left untouched.
- A full disk while saving gives one line naming the path and leaves no temp dir; trainer_state.pt never runs code.
- ``--resume`` with a changed config: documented-safe changes are applied and recorded, others refused by name.
"""
import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dllm2rec.config import load_config
from dllm2rec.errors import ConfigError, Dllm2recError
from dllm2rec.training.trainer import Trainer

FAST = ["train.num_threads=1", "model.dim=8", "train.batch_size=32", "train.eval_batch=256", "train.ks=[5,10,20]"]


def _env(hook: Path | None = None, sleep: float = 0.0, stop: int = -1) -> dict:
    env = dict(os.environ, CI="true", OMP_NUM_THREADS="1", DLLM2REC_LOG_EPOCHS="1", PYTHONUNBUFFERED="1")
    env.pop("DLLM2REC_TEST_CKPT_HOOK", None)
    if hook is not None:
        env.update(DLLM2REC_TEST_CKPT_HOOK=str(hook), DLLM2REC_TEST_CKPT_SLEEP=str(sleep),
                   DLLM2REC_TEST_CKPT_STOP=str(stop))
    return env


def _cmd(data: Path, run: Path, *extra: str) -> list[str]:
    ov = FAST + ["train.epochs=8", "train.patience=100"]
    return [sys.executable, "-m", "dllm2rec", "train", "--data", str(data), "--run-dir", str(run),
            *sum((["-o", o] for o in ov), []), *extra]


def _hook_lines(f: Path) -> list[str]:
    try:
        return f.read_text().splitlines()
    except FileNotFoundError:
        return []


def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def _first_epoch(text: str) -> int | None:
    m = re.search(r"^epoch\s+(\d+)\s+loss", text, re.M)
    return int(m.group(1)) if m else None


# One interpreter imports dllm2rec + torch once, then forks a child per ``dllm2rec train`` run: a 2-core machine
# pays the multi-second torch import once instead of per kill. Each child is a separate process that runs the CLI
# entry point (cli.main) and is SIGKILLed like any other; nothing but the imports is shared.
_ZYGOTE = r"""
import json, os, sys
import dllm2rec.cli
import dllm2rec.training.trainer
import safetensors.torch
import torch._dynamo  # what the optimiser imports on first use: seconds on a loaded machine
assert len(os.listdir("/proc/self/task")) == 1, "imports started threads: fork would be unsafe"
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "spawn":
        pid = os.fork()
        if pid == 0:
            fd = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ.update(req["env"])
            for k in req["unset"]:
                os.environ.pop(k, None)
            code = 0
            try:
                dllm2rec.cli.main(req["argv"])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        print(pid, flush=True)
    else:  # poll / wait: the child's exit code, -signal when killed, None while it runs
        try:
            pid, st = os.waitpid(req["pid"], os.WNOHANG if req["op"] == "poll" else 0)
        except ChildProcessError:
            pid, st = -1, None
        print(json.dumps(None if pid == 0 else -1 if pid < 0 else os.waitstatus_to_exitcode(st)), flush=True)
"""


class _Zygote:
    def __init__(self):
        self.p = subprocess.Popen([sys.executable, "-c", _ZYGOTE], env=_env(), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)

    def _ask(self, **req):
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def spawn(self, argv: list[str], out: Path, hook: Path | None = None, sleep: float = 0.0, stop: int = -1) -> int:
        env = {k: v for k, v in _env(hook, sleep, stop).items() if k.startswith(("DLLM2REC_", "CI"))}
        return self._ask(op="spawn", argv=argv, out=str(out), env=env,
                         unset=[] if hook else ["DLLM2REC_TEST_CKPT_HOOK"])

    def poll(self, pid: int):
        return self._ask(op="poll", pid=pid)

    def wait(self, pid: int):
        return self._ask(op="wait", pid=pid)

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=30)


def _positions(lines: list[str]) -> list[tuple[int, str]]:
    """(position within its epoch's save sequence, phase) per hook line; a sequence starts at log:appended."""
    out, pos = [], -1
    for x in lines:
        phase = x.split(" ", 1)[1]
        pos = 0 if phase == "log:appended" else pos + 1 if pos >= 0 else -1
        out.append((pos, phase))
    return out


def test_sigkill_loop_then_resume_equals_uninterrupted(tiny_dataset_dir, tmp_path):
    """Kills inside every step of an epoch's saves, wherever the implementation puts them: the hook points
    (utils.io.crash_test_hook: before each durable file write, around each directory swap, the trainer's own
    marks) are learnt from the reference run, and one attempt is killed at each position of the sequence up to
    last/ being committed (its process waits at that point of its first epoch's saves until the kill comes), one
    inside best/'s save of epoch 1 (the only epoch sure to improve), and two at seeded random instants."""
    rng = random.Random(12)
    t0 = time.time()
    ref, run = tmp_path / "ref", tmp_path / "run"
    argv = _cmd(tiny_dataset_dir, run)[3:]
    z = _Zygote()
    try:
        z.poll(os.getpid())  # wait for the imports (answers "not my child": -1)
        print(f"imports: {time.time() - t0:.1f} s")
        # the reference run carries the same (sleeping) hooks: they pause, they never change a number
        start = time.time()
        pid = z.spawn(_cmd(tiny_dataset_dir, ref)[3:], tmp_path / "ref.out", tmp_path / "ref.hook", 0.005)
        first = None
        while (code := z.poll(pid)) is None:
            if first is None and _hook_lines(tmp_path / "ref.hook"):
                first = time.time() - start
            time.sleep(0.005)
        assert code == 0, (tmp_path / "ref.out").read_text()[-3000:]
        total = time.time() - start
        first = first or total / 2
        expected = json.loads((ref / "results.json").read_text())
        per_epoch = (total - first) / 7
        seq = _positions(_hook_lines(tmp_path / "ref.hook"))
        epoch1 = [ph for pos, ph in seq[:next(i for i, (pos, _) in enumerate(seq[1:], 1) if pos == 0)]]
        n_last = epoch1.index("last:committed") + 1  # positions up to last/ committed; best/'s save after it
        assert n_last < len(epoch1), epoch1
        print(f"reference: {total:.1f} s, {time.time() - t0:.1f} s in all; epoch 1 saves: {epoch1}")
        plan = [("pos", j) for j in range(n_last)] + [("time", rng.random()) for _ in range(2)]
        rng.shuffle(plan)
        plan.insert(0, ("pos", (n_last + len(epoch1)) // 2))
        in_save = killed = prev_lines = 0
        for i, (kind, what) in enumerate(plan):
            hook, out = tmp_path / f"a{i}.hook", tmp_path / f"a{i}.out"
            pid = z.spawn(argv + (["--resume"] if i else []), out, hook, 0.005, what if kind == "pos" else -1)
            begun = time.time()
            # a random instant within what is left of the run (start-up and epoch 1 included)
            at = what * 0.9 * (first + per_epoch * max(8 - prev_lines - 1, 0)) if kind == "time" else None
            while (code := z.poll(pid)) is None:
                if kind == "pos" and any(pos == what for pos, _ in _positions(_hook_lines(hook))):
                    break  # it waits at that position
                if kind == "time" and time.time() - begun >= at:
                    break
                time.sleep(0.002)
            if code is None:
                os.kill(pid, signal.SIGKILL)
                code = z.wait(pid)
            text = out.read_text()
            if code == 0:  # the run finished before the kill came
                break
            assert code == -signal.SIGKILL, text[-3000:]
            killed += 1
            lines = _hook_lines(hook)
            at_pos = _positions(lines)[-1][0] if lines else None
            in_save += at_pos is not None and 0 < at_pos < n_last - 1  # killed while last/ was being written
            if kind == "pos":
                assert at_pos == what, (what, lines)
            if i:  # continued from the last committed epoch: at most the epoch in flight was lost
                fe = _first_epoch(text)
                assert fe is None or prev_lines <= fe <= prev_lines + 1 or (prev_lines == 0 and fe == 1), \
                    (kind, what, prev_lines, fe, text[-1000:])
            prev_lines = len((run / "log.jsonl").read_text().splitlines()) if (run / "log.jsonl").is_file() else 0
            print(f"kill {i} ({kind} {what}) after {lines[-1:] or 'no save'}: {prev_lines} epochs logged; "
                  f"{time.time() - begun:.1f} s, {time.time() - t0:.1f} s in all")
    finally:
        z.close()
    if not (run / "results.json").exists():  # a fresh interpreter finishes the run
        final = subprocess.run(_cmd(tiny_dataset_dir, run, "--resume"), env=_env(), capture_output=True,
                               text=True, timeout=120)
        assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
        fe = _first_epoch(final.stdout)
        assert fe is None or prev_lines <= fe <= prev_lines + 1 or prev_lines == 0
    assert killed >= n_last and in_save >= n_last - 2, (killed, in_save)  # kills landed, most inside saves
    got = json.loads((run / "results.json").read_text())
    assert got["best_epoch"] == expected["best_epoch"] and got["epochs_run"] == expected["epochs_run"] == 8
    assert got["valid"] == expected["valid"] and got["test"] == expected["test"]  # bit for bit
    la, lb = _log(ref), _log(run)
    assert [r["epoch"] for r in lb] == list(range(1, 9))
    for a, b in zip(la, lb):
        assert {k: v for k, v in a.items() if "seconds" not in k and "per_s" not in k} == \
            {k: v for k, v in b.items() if "seconds" not in k and "per_s" not in k}
    assert not [x.name for x in run.iterdir() if x.name.startswith(".")]  # no stale temp / .old dirs
    assert time.time() - t0 < 120


# ---------------------------------------------------------------------------------------- refusals, in-process
def _cfg(tmp_path, *extra):
    return load_config(None, FAST + ["train.epochs=4", "train.patience=100", f"out_dir={tmp_path}", *extra])


def _paused(tmp_path, tiny_dataset, name="r", epochs=2, *extra):
    tr = Trainer(_cfg(tmp_path, *extra), tiny_dataset, tmp_path / name, quiet=True)
    assert tr.fit(max_epochs_this_call=epochs)["status"] == "paused"
    return tmp_path / name


def _resume(tmp_path, tiny_dataset, name="r", *extra):
    return Trainer(_cfg(tmp_path, *extra), tiny_dataset, tmp_path / name, quiet=True).fit(resume=True)


def _snapshot(run: Path) -> dict:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _refused(tmp_path, tiny_dataset, run, match, *extra, exc=Dllm2recError):
    before = _snapshot(run)
    with pytest.raises(exc, match=match) as e:
        _resume(tmp_path, tiny_dataset, run.name, *extra)
    assert "\n" not in str(e.value)
    assert _snapshot(run) == before  # nothing written, nothing wiped
    return str(e.value)


def _cli(argv: list[str]) -> int:
    from dllm2rec.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def test_resume_refuses_last_without_trainer_state_via_cli(tiny_dataset_dir, tmp_path, capsys):
    """The issue's case: a kill while last/ was saved left it without trainer_state.pt (format before the unit)."""
    run = tmp_path / "run"
    assert _cli(_cmd(tiny_dataset_dir, run)[3:]) == 0
    (run / "results.json").unlink()
    (run / "last" / "trainer_state.pt").unlink()
    (run / "last" / "checkpoint.json").unlink(missing_ok=True)
    before = _snapshot(run)
    capsys.readouterr()
    assert _cli(_cmd(tiny_dataset_dir, run, "--resume")[3:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "incomplete checkpoint" in err[0] and "trainer_state.pt" in err[0], err
    assert _snapshot(run) == before  # the log was neither truncated nor wiped


def test_resume_refuses_inconsistent_run_dirs(tmp_path, tiny_dataset):
    run = _paused(tmp_path, tiny_dataset, "a", 3)
    (run / "last" / "model.safetensors").write_bytes(b"x")  # truncated file
    _refused(tmp_path, tiny_dataset, run, "incomplete checkpoint .*model.safetensors is truncated")

    run = _paused(tmp_path, tiny_dataset, "b", 3)
    lines = (run / "log.jsonl").read_text().splitlines()
    (run / "log.jsonl").write_text(lines[0] + "\n")  # log lost epochs the checkpoint has
    _refused(tmp_path, tiny_dataset, run, "at epoch 3 but log.jsonl has 1 epoch")

    run = _paused(tmp_path, tiny_dataset, "c", 3)
    shutil.rmtree(run / "last")  # checkpoint gone, 3 logged epochs: never silently start again
    _refused(tmp_path, tiny_dataset, run, "no checkpoint in .*3 logged epochs; refusing to restart from epoch 1")


def test_trainer_state_never_executes_code(tmp_path, tiny_dataset):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run = _paused(tmp_path, tiny_dataset, "e", 2)
    (run / "last" / "trainer_state.pt").write_bytes(pickle.dumps({"epoch": Evil()}, protocol=2))
    (run / "last" / "checkpoint.json").unlink()
    _refused(tmp_path, tiny_dataset, run, "trainer_state.pt: unreadable trainer state")
    assert not marker.exists()


def test_full_disk_while_saving_is_one_line_and_leaves_no_temp(tmp_path, tiny_dataset, monkeypatch):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file a write goes to")
    run = _paused(tmp_path, tiny_dataset, "d", 1)
    good = _snapshot(run / "last")
    real_write = os.write

    def full_disk(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.startswith(str(run / ".last.")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    tr = Trainer(_cfg(tmp_path), tiny_dataset, run, quiet=True)
    with pytest.raises(Dllm2recError, match=r"disk full while writing .*last \(No space left on device\)") as e:
        tr.fit(resume=True)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(os, "write", real_write)
    assert not [x.name for x in run.iterdir() if x.name.startswith(".")]  # temp dir removed
    assert _snapshot(run / "last") == good  # the previous complete checkpoint is kept
    assert len((run / "log.jsonl").read_text().splitlines()) == 2  # epoch 2 in flight: resumable
    res = _resume(tmp_path, tiny_dataset, "d")
    full = Trainer(_cfg(tmp_path), tiny_dataset, tmp_path / "full", quiet=True).fit()
    assert res["test"] == full["test"] and res["best_epoch"] == full["best_epoch"]


def test_recovers_a_checkpoint_left_between_two_renames(tmp_path, tiny_dataset):
    """Without RENAME_EXCHANGE a kill between the two renames leaves .last.*.tmp (new) + .last.*.old (previous)."""
    full = Trainer(_cfg(tmp_path), tiny_dataset, tmp_path / "full", quiet=True).fit()
    run = _paused(tmp_path, tiny_dataset, "g", 2)
    os.replace(run / "last", run / ".last.abc123.tmp")       # the new, complete one, not yet renamed
    (run / ".last.zzz.old").mkdir()                          # a half-deleted previous one
    (run / ".last.zzz.old" / "student.json").write_text("{}")
    (run / ".best.q1.tmp").mkdir()
    (run / ".log.jsonl.q2.tmp").write_text("partial")
    res = _resume(tmp_path, tiny_dataset, "g")
    assert res["test"] == full["test"] and res["best_epoch"] == full["best_epoch"]
    assert not [x.name for x in run.iterdir() if x.name.startswith(".")]


def test_kill_between_last_and_best_rebuilds_best(tmp_path, tiny_dataset):
    full = Trainer(_cfg(tmp_path), tiny_dataset, tmp_path / "full", quiet=True).fit()
    b = full["best_epoch"]
    assert b < 4  # the best epoch is not the last: no later epoch rewrites best/
    run = _paused(tmp_path, tiny_dataset, "h", b)  # killed after last/ of the best epoch, before its best/
    shutil.rmtree(run / "best")
    with open(run / "log.jsonl", "a") as f:
        f.write(f'{{"epoch": {b + 1}, "train/lo')  # and the epoch in flight left a partial line
    res = _resume(tmp_path, tiny_dataset, "h")
    assert res["test"] == full["test"] and res["valid"] == full["valid"]
    assert [r["epoch"] for r in _log(run)] == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------- --resume, changed config
def test_resume_refuses_changed_config_naming_fields(tmp_path, tiny_dataset):
    run = _paused(tmp_path, tiny_dataset, "c1", 2)
    msg = _refused(tmp_path, tiny_dataset, run, "changed config", "optim.lr=0.05", "train.seed=7", exc=ConfigError)
    assert "optim.lr 0.001 -> 0.05" in msg and "train.seed 2024 -> 7" in msg
    assert "model.dim" not in msg
    _refused(tmp_path, tiny_dataset, run, r"train.patience 100 -> 50", "train.patience=50", exc=ConfigError)
    _refused(tmp_path, tiny_dataset, run, r"train.epochs 4 -> 1", "train.epochs=1", exc=ConfigError)


def test_resume_refuses_changed_config_via_cli(tiny_dataset_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli(_cmd(tiny_dataset_dir, run)[3:]) == 0
    before = _snapshot(run)
    capsys.readouterr()
    assert _cli(_cmd(tiny_dataset_dir, run, "--resume", "-o", "optim.lr=0.05", "-o", "train.seed=7")[3:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.lr 0.001 -> 0.05" in err[0] and "train.seed 2024 -> 7" in err[0], err
    assert _snapshot(run) == before  # config.yaml / results.json do not claim values that were not used


def test_resume_applies_and_records_safe_changes(tmp_path, tiny_dataset):
    full6 = Trainer(_cfg(tmp_path, "train.epochs=6", "train.patience=200"), tiny_dataset, tmp_path / "f6",
                    quiet=True).fit()
    run = _paused(tmp_path, tiny_dataset, "s", 2)
    res = _resume(tmp_path, tiny_dataset, "s", "train.epochs=6", "train.patience=200", "train.eval_batch=7")
    assert res["epochs_run"] == 6
    assert res["test"] == full6["test"] and res["best_epoch"] == full6["best_epoch"]
    saved = json.loads((run / "results.json").read_text())
    assert saved["config_changes"] == [{"epoch": 2, "changed": {
        "train.epochs": {"old": 4, "new": 6}, "train.eval_batch": {"old": 256, "new": 7},
        "train.patience": {"old": 100, "new": 200}}}]
    assert saved["config"]["train"]["epochs"] == 6
    assert "epochs: 6" in (run / "config.yaml").read_text()
    assert "config_changes" not in full6  # the happy path's results.json is unchanged
