"""nrpm.train: paradigms 2 and 3, base training, exact resume, crash safety, logs, CLI and bad input.

Tiny models on synthetic data (4x4 images, 3 classes) keep every run to a fraction of a second; one CLI test
uses the paper's MNIST MLP on a few real images.
"""

import argparse
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import nrpm
import nrpm.attacks as A
from nrpm import train as T
from nrpm.runs import RunContext
from nrpm.train import loop
from nrpm.cli.train import add_train_parsers
from nrpm.models import load_checkpoint
from model_helpers import TinyConvBN, TinyMLP


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models (conftest.py)


def make_model(cls=TinyMLP, seed=1):
    torch.manual_seed(seed)
    return cls()


def make_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    teacher = torch.randn(16, 3, generator=g)
    y = (x.flatten(1) @ teacher).argmax(1)
    return x, y


def cfg(**kw):
    base = dict(model="tiny", paradigm=2, lam=0.5, K=2, attack="fgsm", attack_eps=0.1, epochs=2, batch_size=16,
                optimizer="adam", lr=0.05, val_size=16, schedule="cosine")
    base.update(kw)
    return T.TrainConfig(**base)


def run(config, out, cls=TinyMLP, **kw):
    """run_training with a quiet RunContext; ``overwrite`` goes to the context, the rest to TrainOptions."""
    ctx = RunContext(Path(out), "train", overwrite=kw.pop("overwrite", False), progress=False,
                     log=kw.pop("log", lambda m: None))
    model, data, test_data = kw.pop("model", None) or make_model(cls), kw.pop("data", None) or make_data(), \
        kw.pop("test_data", None)
    if "test" in kw:
        kw["tests"] = kw.pop("test")
    return T.run_training(config, ctx, model=model, data=data, test_data=test_data, options=T.TrainOptions(**kw))


def final_state(out):
    return T.read_checkpoint(out / "checkpoint.pt")["model_state"]


# ------------------------------------------------------------------------------------------------ paradigms
def test_paradigm2_learns_only_lam_and_keeps_bn_statistics(tmp_path):
    base = make_model(TinyConvBN)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    summary = run(cfg(paradigm=2, epochs=2), tmp_path, model=base)
    after = final_state(tmp_path)
    lam_keys = [k for k in after if k.endswith("lam_logit")]
    assert sorted(lam_keys) == ["conv.lam_logit", "fc.lam_logit"]
    for k, v in before.items():  # weights, biases and BN running statistics untouched
        assert torch.equal(after[k], v), k
    assert any(abs(v - 0.5) > 1e-3 for v in summary["lam"].values())  # lam moved
    assert summary["artifacts"] == ["reprogramming.pt"] and not (tmp_path / "model.pt").exists()
    assert (tmp_path / "reprogramming.pt").stat().st_size < 5000
    # the artifact on top of the untouched base model is the trained model
    fresh = make_model(TinyConvBN)
    nrpm.load_reprogramming(fresh, tmp_path / "reprogramming.pt")
    assert nrpm.lam_table(fresh) == pytest.approx(summary["lam"], abs=1e-6)


def test_paradigm3_trains_weights_and_lam_and_saves_a_full_checkpoint(tmp_path):
    summary = run(cfg(paradigm=3, optimizer="sgd", lr=0.1, lam_lr=0.5), tmp_path)
    after = final_state(tmp_path)
    start = make_model().state_dict()
    assert not torch.equal(after["fc1.weight"], start["fc1.weight"])
    assert any(abs(v - 0.5) > 1e-3 for v in summary["lam"].values())
    assert set(summary["artifacts"]) == {"reprogramming.pt", "model.pt"}
    # model.pt: plain weights for load_checkpoint + the reprogramming state
    plain = make_model()
    info = load_checkpoint(plain, tmp_path / "model.pt")
    assert info["paradigm"] == 3 and info["epoch"] == 2
    nrpm.load_reprogramming(plain, tmp_path / "reprogramming.pt")
    trained = make_model()
    nrpm.reprogram(trained, nrpm.ReprogramConfig(lam=0.5, K=2, paradigm=3))
    trained.load_state_dict(after)
    x, _ = make_data(8, seed=5)
    assert torch.allclose(plain.eval()(x), trained.eval()(x), atol=1e-5)


def test_base_training_learns(tmp_path):
    data = make_data(256)
    summary = run(cfg(paradigm=0, attack="none", optimizer="sgd", lr=0.5, epochs=4, val_size=64), tmp_path,
                  data=data)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_clean"] > 0.5 and rows[-1]["val_robust"] is None and rows[-1]["lam"] == {}
    assert summary["artifacts"] == ["model.pt"]
    model = make_model()
    load_checkpoint(model, tmp_path / "model.pt")


def test_adversarial_base_training_and_validation_attack(tmp_path):
    run(cfg(paradigm=0, attack="pgd", attack_eps=0.1, attack_steps=2, optimizer="sgd", lr=0.2), tmp_path)
    row = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert 0 <= row["val_robust"] <= row["val_clean"] <= 1


# ------------------------------------------------------------------------------------------------ attacks
def test_training_fgsm_equals_nrpm_attacks_fgsm_and_restores_flags():
    model = make_model(TinyConvBN).train()
    model.fc.weight.requires_grad_(False)
    x, y = make_data(16)
    ours = T.adversarial_examples(model, x, y, attack="fgsm", eps=0.1)
    assert model.training and model.bn.training and not model.fc.weight.requires_grad
    assert model.conv.weight.requires_grad
    ref = A.FGSM(0.1)(model, x, y)
    assert torch.allclose(ours, ref, atol=1e-7)


def _old_training_attack(model, x, y, *, eps, steps, alpha, noise):
    """The training attack as it was before it moved onto nrpm.attacks.ascend (a frozen copy of that loop)."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        x = x.detach()
        x_adv = x.clone() if noise is None else (x + noise.to(x)).clamp(0.0, 1.0)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                loss = nn.functional.cross_entropy(model(x_adv), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + alpha * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
    return x_adv.detach()


@pytest.mark.parametrize("cls", [TinyMLP, TinyConvBN])
@pytest.mark.parametrize("attack,steps,alpha,random_start", [
    ("fgsm", 1, 0.1, False), ("fgsm", 1, 0.05, True), ("pgd", 3, 0.04, True), ("pgd", 4, 0.03, False)])
def test_training_attack_is_bit_identical_to_the_old_loop(cls, attack, steps, alpha, random_start):
    model = make_model(cls, seed=3).train()
    x, y = make_data(24, seed=7)
    noise = (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(5)) - 1) * 0.1 if random_start else None
    ours = T.adversarial_examples(model, x, y, attack=attack, eps=0.1, steps=steps, alpha=alpha, noise=noise)
    old = _old_training_attack(model, x, y, eps=0.1, steps=steps, alpha=alpha, noise=noise)
    assert torch.equal(ours, old)
    assert model.training and not torch.equal(ours, x)


def test_training_pgd_stays_in_budget_and_moves():
    model = make_model()
    x, y = make_data(16)
    noise = (2 * torch.rand(x.shape) - 1) * 0.1
    adv = T.adversarial_examples(model, x, y, attack="pgd", eps=0.1, steps=3, alpha=0.04, noise=noise)
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    loss = nn.functional.cross_entropy
    assert loss(model(adv), y) > loss(model(x), y)


def test_attack_defaults_are_resolved():
    c = cfg(attack="pgd", attack_eps=8 / 255, attack_steps=None)
    assert c.attack_steps == 7 and c.attack_alpha == pytest.approx(2.5 * 8 / 255 / 7) and c.random_start
    c = cfg(attack="fgsm", attack_eps=0.3)
    assert c.attack_steps == 1 and c.attack_alpha == 0.3 and not c.random_start
    assert c.val_attack == "fgsm" and c.val_eps == 0.3


@pytest.mark.parametrize("paradigm", [2, 3])
@pytest.mark.parametrize("lam,clamped", [(0.0, "0.0001"), (1.0, "0.9999")])
def test_a_start_lam_of_0_or_1_warns_that_it_was_clamped(tmp_path, paradigm, lam, clamped):
    with pytest.warns(UserWarning, match=rf"lam = {lam:g}: the starting lam was clamped to {clamped}$"):
        summary = run(cfg(paradigm=paradigm, lam=lam, epochs=1), tmp_path)
    assert summary["epochs_done"] == 1


def test_no_clamp_warning_inside_0_1_or_on_resume(tmp_path, recwarn):
    run(cfg(lam=0.5, epochs=1), tmp_path / "half")
    with pytest.warns(UserWarning, match="clamped"):
        run(cfg(lam=1.0, epochs=1, schedule="constant"), tmp_path / "one")
    run(cfg(lam=1.0, epochs=2, schedule="constant"), tmp_path / "one", resume=True)  # lam comes from the file
    assert not [w for w in recwarn if "clamped" in str(w.message)]  # neither the lam = 0.5 run nor the resume


# ------------------------------------------------------------------------------------------------ resume
def _resume_config():
    # everything that draws random numbers: augmentation, PGD random starts, dropout, per-epoch subsets
    return cfg(paradigm=3, attack="pgd", attack_eps=0.1, attack_steps=2, optimizer="sgd", lr=0.1, lam_lr=0.3,
               nesterov=True, weight_decay=1e-3, augment=True, train_subset=48, epochs=3, schedule="cosine")


def test_resume_continues_exactly_after_a_kill_mid_epoch(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(_resume_config(), straight, cls=TinyConvBN)

    def kill(epoch, step):
        if epoch == 1 and step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(_resume_config(), killed, cls=TinyConvBN, step_hook=kill)
    saved = T.read_checkpoint(killed / "checkpoint.pt")
    assert saved["epoch"] == 1  # the killed epoch is lost, the last checkpoint is intact
    assert len((killed / "log.jsonl").read_text().splitlines()) == 1
    # torch's global RNG has moved on since; resume must restore it from the checkpoint
    torch.manual_seed(12345)
    summary = run(_resume_config(), killed, cls=TinyConvBN, resume=True)
    assert summary["epochs_done"] == 3
    a, b = final_state(straight), final_state(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows_a = [json.loads(r) for r in (straight / "log.jsonl").read_text().splitlines()]
    rows_b = [json.loads(r) for r in (killed / "log.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if "seconds" not in k}
    assert [strip(r) for r in rows_a] == [strip(r) for r in rows_b]


def test_a_crash_while_saving_never_corrupts_the_last_checkpoint(tmp_path, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def flaky_save(obj, f, *a, **k):
        calls["n"] += 1
        if isinstance(obj, dict) and obj.get("format") == T.CHECKPOINT_FORMAT and obj["epoch"] == 2:
            f.write(b"half a checkpoint")
            raise OSError("disk full")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        run(cfg(epochs=3), tmp_path)
    monkeypatch.setattr(torch, "save", real_save)
    assert T.read_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".checkpoint")]  # temp file cleaned up
    assert run(cfg(epochs=3), tmp_path, resume=True)["epochs_done"] == 3


def test_resume_of_a_finished_run_only_evaluates(tmp_path):
    run(cfg(epochs=1), tmp_path)
    x, y = make_data(40, seed=9)
    test = T.TestSettings(attack="fgsm", budgets=[0, 0.1], n_samples=40, batch_size=20)
    summary = run(cfg(epochs=1), tmp_path, resume=True, test=test, test_data=(x, y))
    assert summary["epochs_done"] == 1
    saved = json.loads((tmp_path / "test_fgsm.json").read_text())
    assert [c["budget"] for c in saved["cells"]] == [0, 0.1] and saved["cells"][0]["n"] == 40
    assert "| tiny paradigm 2 |" in saved["table"]
    assert "fgsm" in json.loads((tmp_path / "run.json").read_text())["tests"]


# ------------------------------------------------------------------------------------------------ run control
def test_logs_and_checkpoint_contents(tmp_path):
    run(cfg(epochs=2), tmp_path, tensorboard=True)  # tensorboard is optional: skipped when not installed
    rows = [json.loads(r) for r in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert set(r["lam"]) == {"fc1", "fc2"} and r["val_clean"] is not None and r["val_robust"] is not None
        assert r["epoch_seconds"] > 0 and r["samples"] == 80  # 96 - 16 held out, 5 full batches of 16
    header = (tmp_path / "log.csv").read_text().splitlines()[0]
    assert "lam/fc1" in header and "val_robust" in header
    ckpt = T.read_checkpoint(tmp_path / "checkpoint.pt")
    for key in ("model_state", "optimizer", "scheduler", "generator", "rng", "epoch", "history", "identity"):
        assert key in ckpt
    assert set(ckpt["rng"][0]) >= {"torch", "python", "numpy"}


def test_max_minutes_stops_at_an_epoch_boundary(tmp_path):
    summary = run(cfg(epochs=5), tmp_path, max_minutes=1e-6)
    assert summary["stopped"] == "time budget" and summary["epochs_done"] == 1
    assert T.read_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


def test_train_subset_draws_a_fresh_subset_each_epoch(tmp_path, monkeypatch):
    seen = []
    real = T.adversarial_examples

    def spy(model, x, y, **kw):
        seen.append(x.clone())
        return real(model, x, y, **kw)

    monkeypatch.setattr(loop, "adversarial_examples", spy)  # the name the training loop calls
    run(cfg(epochs=2, train_subset=32), tmp_path)
    assert len(seen) == 4  # 2 batches of 16 per epoch
    first, second = torch.cat(seen[:2]), torch.cat(seen[2:])
    assert not torch.equal(first, second)


def test_clean_weight_mixes_clean_and_adversarial_loss(tmp_path):
    """clean_weight=1 trains on clean inputs only (same lam as no attack at all); 0.5 differs from both ends."""
    def lams(out, **kw):
        run(cfg(epochs=1, schedule="constant", **kw), out)
        return final_state(out)["fc1.lam_logit"]
    only_clean = lams(tmp_path / "w1", clean_weight=1.0)
    no_attack = lams(tmp_path / "none", attack="none")
    mixed = lams(tmp_path / "w05", clean_weight=0.5)
    only_adv = lams(tmp_path / "w0", clean_weight=0.0)
    assert torch.allclose(only_clean, no_attack)
    assert not torch.allclose(mixed, only_clean) and not torch.allclose(mixed, only_adv)
    assert cfg(attack="none", clean_weight=0.5).clean_weight == 0.0  # nothing to mix without an attack


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kw,message", [
    (dict(paradigm=1), "paradigm 1 trains nothing"),
    (dict(paradigm=7), "unknown paradigm"),
    (dict(attack="cw"), "unknown training attack"),
    (dict(attack="pgd", attack_eps=0), "needs a budget"),
    (dict(paradigm=2, bn_mode="train"), "bn_mode 'train' is not allowed"),
    (dict(K=0), "K = 0"),
    (dict(optimizer="lbfgs"), "unknown optimizer"),
    (dict(train_subset=4), "smaller than one batch"),
    (dict(lr=0), "learning rate"),
    (dict(clean_weight=1.5), "clean weight"),
    (dict(clean_weight=-0.1), "clean weight"),
])
def test_bad_config(kw, message):
    with pytest.raises(ValueError, match=message):
        cfg(**kw)


def test_paradigm2_without_robust_layers_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="matches no"):
        run(cfg(layer_types=["conv2d"]), tmp_path)  # an MLP has no conv to reprogram
    assert not (tmp_path / "checkpoint.pt").exists()


def test_resume_from_another_config_or_model_is_refused(tmp_path):
    run(cfg(epochs=1), tmp_path)
    with pytest.raises(ValueError, match=r"other settings.*K: 2 on file, 3 now"):
        run(cfg(epochs=1, K=3), tmp_path, resume=True)
    with pytest.raises(ValueError, match="does not fit the model"):
        run(cfg(epochs=1), tmp_path, resume=True, cls=TinyConvBN)
    with pytest.raises(ValueError, match="exists: pass resume"):
        run(cfg(epochs=1), tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        run(cfg(epochs=1), tmp_path / "empty", resume=True)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="training checkpoint .* is not readable by torch.load"):
        run(cfg(epochs=1), tmp_path / "other", resume=tmp_path / "junk.pt")


def test_a_folder_another_run_writes_is_refused_before_any_work(tmp_path):
    from nrpm._io import output_dir_lock

    with output_dir_lock(tmp_path, "train"):
        with pytest.raises(RuntimeError, match="in use by nrpm train"):
            run(cfg(epochs=1), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    run(cfg(epochs=1), tmp_path)
    assert (tmp_path / "checkpoint.pt").exists() and not (tmp_path / ".nrpm.lock").exists()


def test_non_writable_output_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not writable"):
        run(cfg(), tmp_path / "file" / "out")


def test_world_size_must_split_the_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")  # refused before any process group is joined
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        run(cfg(batch_size=16), tmp_path)


# ------------------------------------------------------------------------------------------------ CLI
def _parser():
    parser = argparse.ArgumentParser(prog="nrpm")
    add_train_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_reprogram_paradigm2_on_mnist_mlp(shared_dir, tmp_path, capsys):
    args = _parser().parse_args([
        "reprogram", "--paradigm", "2", "--model", "mlp3", "--out", str(tmp_path), "--K", "1",
        "--attack", "fgsm", "--attack-eps", "0.3", "--epochs", "1", "--batch-size", "16", "--train-subset", "32",
        "--val-size", "16", "--lr", "0.1", "--test-attack", "fgsm", "--test-budgets", "0", "0.1",
        "--test-samples", "16", "--no-progress"])
    assert args.func(args) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out.splitlines()[0])
    assert summary["epochs_done"] == 1 and set(summary["lam"]) == {"fc1", "fc2", "fc3"}
    assert "| mlp3 paradigm 2 |" in out.out and "lam fc1=" in out.err
    model, info = T.load_trained(tmp_path)  # the paper's checkpoint + the learned lam
    assert info["paradigm"] == 2 and nrpm.lam_table(model) == pytest.approx(summary["lam"], abs=1e-6)
    base, _ = nrpm.models.load_pretrained("mlp3")
    assert torch.equal(model.fc1.weight, base.fc1.weight)


def test_cli_train_parses_units_and_rejects_paradigm_1(tmp_path, capsys):
    from nrpm.cli.train import config_from_args

    args = _parser().parse_args(["train", "--model", "resnet18_narrow", "--out", str(tmp_path), "--attack", "pgd",
                                 "--attack-eps", "8", "--attack-alpha", "2", "--attack-steps", "7",
                                 "--budget-unit", "255"])
    c = config_from_args(args, 0)
    assert c.attack_eps == pytest.approx(8 / 255) and c.attack_alpha == pytest.approx(2 / 255)
    assert c.checkpoint is None and c.optimizer == "sgd" and c.random_start
    with pytest.raises(SystemExit):  # refused while parsing, before anything runs
        _parser().parse_args(["reprogram", "--paradigm", "1", "--model", "mlp3", "--out", str(tmp_path)])
    assert "paradigm 1 trains nothing" in capsys.readouterr().err


def test_a_constant_schedule_run_can_be_extended_a_cosine_one_cannot(tmp_path):
    run(cfg(epochs=1, schedule="constant"), tmp_path / "const")
    assert run(cfg(epochs=2, schedule="constant"), tmp_path / "const", resume=True)["epochs_done"] == 2
    run(cfg(epochs=1), tmp_path / "cos")
    with pytest.raises(ValueError, match="planned for 1 epochs with a cosine schedule"):
        run(cfg(epochs=2), tmp_path / "cos", resume=True)


def test_resume_auto_starts_or_continues(tmp_path):
    assert run(cfg(epochs=1, schedule="constant"), tmp_path, resume="auto")["epochs_done"] == 1
    assert run(cfg(epochs=2, schedule="constant"), tmp_path, resume="auto")["epochs_done"] == 2
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2


def test_reprogram_takes_the_robust_estimator_and_lr_gamma_is_the_step_decay():
    from nrpm.cli.main import parse_args
    from nrpm.cli.train import config_from_args

    args = parse_args(["reprogram", "--paradigm", "2", "--model", "mlp3", "--out", "x", "--estimator", "hm",
                       "--gamma", "2", "--delta", "1", "--scale", "relative", "--schedule", "step", "--lr-gamma",
                       "0.5"])
    config = config_from_args(args, 2)
    assert config.estimator == {"norm": "hm", "gamma": 2.0, "delta": 1.0, "scale": "relative"}
    assert config.lr_gamma == 0.5
    rp = config.reprogram_config()
    assert (rp.norm, rp.gamma, rp.delta, rp.scale) == ("hm", 2.0, 1.0, "relative")
    assert T.TrainConfig(model="mlp3", paradigm=2).reprogram_config().norm == "l1"


# ------------------------------------------------------------------------------------------------ plain words
def test_run_json_names_the_learning_rate_decay_lr_gamma_and_old_checkpoints_still_resume(tmp_path):
    config = cfg(epochs=1, schedule="step", milestones=[1], lr_gamma=0.5)
    summary = run(config, tmp_path)
    assert summary["config"]["lr_gamma"] == 0.5 and "gamma" not in summary["config"]
    assert T.read_checkpoint(tmp_path / "checkpoint.pt")["identity"]["gamma"] == 0.5  # the key resumes compare
    assert T.TrainConfig.from_dict({**config.to_dict(), "gamma": 0.25, "lr_gamma": 0.25}).lr_gamma == 0.25
    old = {k: v for k, v in config.to_dict().items() if k != "lr_gamma"}
    assert T.TrainConfig.from_dict({**old, "gamma": 0.25}).lr_gamma == 0.25


def test_the_header_counts_the_images_an_epoch_trains_on_and_adversarial_accuracy_says_so(tmp_path):
    lines = []
    run(cfg(epochs=1, train_subset=40), tmp_path, log=lines.append)
    assert "a fresh random 40 of" in lines[0] and "training images per epoch" in lines[0]
    assert any("train acc on fgsm examples" in line for line in lines)


def test_extending_a_cosine_run_says_why_it_cannot(tmp_path):
    run(cfg(epochs=1), tmp_path)
    with pytest.raises(ValueError, match="cosine schedule.*cannot be continued to 2 exactly.*constant or step"):
        run(cfg(epochs=2), tmp_path, resume=True)


def test_a_plain_run_is_keyed_without_the_reprogramming_and_old_checkpoints_resume(tmp_path):
    config = cfg(paradigm=0, epochs=2, schedule="constant")
    assert not {"lam", "K", "layer_types"} & set(config.identity())
    run(cfg(paradigm=0, epochs=1, schedule="constant"), tmp_path)
    path = tmp_path / "checkpoint.pt"
    saved = torch.load(path, weights_only=True)
    saved["identity"].update(lam=0.5, K=3, eps=1e-3, layer_types=["linear", "conv2d"], layers=None, skip=[])
    torch.save(saved, path)  # as written before plain runs left these fields out
    assert run(config, tmp_path, resume=True)["epochs_done"] == 2
