"""The search benchmark (benchmarks/search): its statistics, the TAO arm's faithful mechanics, and a --quick run
that checks the harness end to end (every arm and seed, the anytime curves, the downstream figures), not the
result."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO))

from benchmarks.search import report  # noqa: E402
from benchmarks.search.arms import TAO_SPACE, tao_ignored_settings, untied_warmup  # noqa: E402


def test_epochs_to_target_and_equal_epochs():
    curve = [None, 0.9, 0.7, 0.7, 0.5]
    assert report.epochs_to(curve, 0.7) == 3
    assert report.epochs_to(curve, 0.4) == math.inf
    assert report.at_equal_epochs(curve, [0.8, 0.6]) == (0.9, 0.6)


def test_time_to_tao_counts_a_target_never_reached_as_infinite():
    runs = {
        "tao": [{"seed": 0, "best": 0.6, "curve": [0.9, 0.6]}, {"seed": 1, "best": 0.5, "curve": [0.5]}],
        "ours": [
            {"seed": 0, "best": 0.55, "curve": [0.7, 0.65, 0.55]},
            {"seed": 1, "best": 0.6, "curve": [0.6]},
        ],
    }
    out = report.time_to_tao(runs, "ours")
    assert [p["ratio"] for p in out["per_seed"]] == [1.5, math.inf]
    assert out["median_ratio"] == math.inf and out["reached"] == "1 of 2"


def test_downstream_pairs_by_seed_and_counts_a_failed_search_at_chance():
    runs = {
        "ours": [
            {"seed": s, "selected": {"knn_acc": 0.4}, "finetune": {"top1": 0.6 + s / 100}} for s in range(4)
        ],
        "tao": [{"seed": 0, "selected": None}]
        + [{"seed": s, "selected": {}, "finetune": {"top1": 0.7}} for s in (1, 2, 3)],
    }
    d = report.downstream(runs, ["ours", "tao"])
    assert d["per_arm"]["tao"]["finetune_top1"] == [0.1, 0.7, 0.7, 0.7]
    assert d["per_arm"]["ours"]["probe_top1"] == [None] * 4  # not measured: left out, never invented
    vs = d["vs"]["tao"]["finetune_top1"]
    assert vs["ours_ge"] == "1 of 4"
    lo, hi = vs["ci95"]
    assert lo <= vs["median_diff"] <= hi


def test_pooled_correlation_counts_each_search_and_encoder_once(tmp_path, capsys):
    from benchmarks.search import correlation

    def run(arm, seed, lr, loss, top1, epoch=3, where=None):
        cfg = {"train.optim.lr": lr}
        return {
            "arm": arm,
            "seed": seed,
            "results_dir": where or f"/runs/{arm}-{seed}",
            "selected": {"epoch": epoch, "config": cfg, "train_loss": loss, "knn_acc": 1 - loss},
            "probe": {"probe_top1": 0.9},
            "finetune": {"top1": top1},
        }

    a = {"ours": [run("ours", s, 1e-3 * (s + 1), 0.7 + s / 100, 0.3 - s / 100) for s in range(4)]}
    a["random"] = [run("random", 0, 1e-3, 0.7, 0.3)]  # the same start-up trial as ours on seed 0
    a["tao"] = [run("tao", 0, 0.5, 0.6, 0.2), run("tao", 1, 0.4, 0.65, 0.25, epoch=2)]  # not full length
    b = {"ours": a["ours"][:2], "cand": [run("cand", 0, 2e-4, 0.65, 0.5)]}  # ours repeated in another report
    paths = []
    for name, runs in (("one.json", a), ("two.json", b)):
        (tmp_path / name).write_text(json.dumps({"runs": runs}))
        paths.append(str(tmp_path / name))
    out = tmp_path / "pooled.json"
    assert correlation.main(["--pooled", *paths, "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["searches_per_arm"] == {"cand": 1, "ours": 4, "random": 1, "tao": 1}
    assert len(d["encoders"]) == 6  # random's encoder is ours' on seed 0: once
    fig = d["spearman_with_finetune_top1"]
    assert fig["all_arms"]["train_loss"]["n"] == 6 and fig["our_space"]["train_loss"]["n"] == 5
    assert fig["our_space"]["train_loss"]["rho"] == pytest.approx(-1.0)  # lower loss, better finetune here
    assert correlation.main(["--pooled", str(tmp_path / "missing.json"), "--json", str(out)]) == 2
    assert "no benchmark report" in capsys.readouterr().err


def test_refinetune_refuses_a_missing_report_or_an_arm_it_does_not_hold(tmp_path, capsys):
    from benchmarks.search import refinetune

    assert refinetune.main(["--report", str(tmp_path / "none.json"), "--out", str(tmp_path / "r")]) == 2
    assert "no benchmark report" in capsys.readouterr().err
    (tmp_path / "s.json").write_text(json.dumps({"budget": {"epochs": 3}, "runs": {"ours": []}}))
    assert refinetune.main(["--report", str(tmp_path / "s.json"), "--arms", "ours", "tao"]) == 2
    assert "tao not in" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing trained or written


def test_refinetune_takes_an_earlier_jsons_records_of_the_same_encoder_and_length(tmp_path):
    from benchmarks.search import refinetune

    selected = {"config": {"train.optim.lr": 5e-4}, "epoch": 3, "train_loss": 0.75, "knn_acc": 0.45}
    report = {"budget": {"epochs": 3}, "runs": {"ours": [{"seed": 0, "selected": selected}]}}
    (tmp_path / "s.json").write_text(json.dumps(report))
    record = {"seed": 0, "selected": selected, "pretrain": {"reproduced": True}, "finetune": {"top1": 0.9}}
    control = {"seed": 0, "top1": 0.88, "val_top1": 0.87, "seconds": 60.0}
    earlier = {"finetune_epochs": 40, "runs": {"ours": [record]}, "no_pretraining": {"runs": [control]}}
    (tmp_path / "old.json").write_text(json.dumps(earlier))
    args = ["--report", str(tmp_path / "s.json"), "--arms", "ours", "--seeds", "1", "--scratch-seeds", "1"]
    args += [
        "--out",
        str(tmp_path / "r"),
        "--json",
        str(tmp_path / "new.json"),
        "--reuse",
        str(tmp_path / "old.json"),
    ]
    assert refinetune.main(args) == 0
    new = json.loads((tmp_path / "new.json").read_text())
    assert new["runs"]["ours"] == [{**record, "source_finetune": None}] and new["no_pretraining"]["runs"] == [
        control
    ]
    assert new["reproduced"] == {"ours": "1 of 1"}
    assert (
        not (tmp_path / "r" / "ours-0").exists() and not (tmp_path / "r" / "scratch-0").exists()
    )  # nothing trained
    # another finetune length, or another selection (here: a search that selected nothing), is not reused
    assert refinetune.reusable([str(tmp_path / "old.json")], 10) == ({}, {})
    report["runs"]["ours"][0]["selected"] = None
    (tmp_path / "s.json").write_text(json.dumps(report))
    assert refinetune.main([*args, "--scratch-seeds", "0"]) == 0
    assert json.loads((tmp_path / "new.json").read_text())["runs"]["ours"][0].get("finetune") is None


def test_refinetune_takes_each_arm_from_the_first_report_that_has_it_renamed_as_asked(tmp_path):
    """A new default's report beside the previous one's: `ours` from the new, the old `ours` as ours-v1, `tao`
    from the old; an earlier refinetune's record of the old `ours` serves ours-v1 (same selection)."""
    from benchmarks.search import refinetune

    def sel(lr):
        return {"config": {"train.optim.lr": lr}, "epoch": 3, "train_loss": 0.75, "knn_acc": 0.45}

    new = {"budget": {"epochs": 3}, "runs": {"ours": [{"seed": 0, "selected": sel(2e-4)}]}}
    old = {
        "budget": {"epochs": 3},
        "runs": {a: [{"seed": 0, "selected": sel(lr)}] for a, lr in [("ours", 2e-3), ("tao", 0.3)]},
    }
    (tmp_path / "new.json").write_text(json.dumps(new))
    (tmp_path / "old.json").write_text(json.dumps(old))
    reports = [str(tmp_path / "new.json"), f"{tmp_path / 'old.json'}:ours=ours-v1"]
    sources = report.arm_sources([report.parse_report(r) for r in reports])
    assert {a: (k, runs[0]["selected"]["config"]) for a, (k, runs, _, _) in sources.items()} == {
        "ours": ("ours", {"train.optim.lr": 2e-4}),
        "ours-v1": ("ours", {"train.optim.lr": 2e-3}),
        "tao": ("tao", {"train.optim.lr": 0.3}),
    }
    # the previous default's refinetune JSON holds the old `ours` and `tao`: both serve here, nothing is trained
    records = {
        a: {"seed": 0, "selected": sel(lr), "pretrain": {"reproduced": True}, "finetune": {"top1": t}}
        for a, lr, t in [("ours", 2e-3, 0.87), ("tao", 0.3, 0.5)]
    }
    done = {"finetune_epochs": 40, "runs": {a: [r] for a, r in records.items()}}
    (tmp_path / "done.json").write_text(json.dumps(done))
    args = ["--report", *reports, "--arms", "ours-v1", "tao", "--seeds", "1", "--scratch-seeds", "0"]
    args += [
        "--out",
        str(tmp_path / "r"),
        "--json",
        str(tmp_path / "out.json"),
        "--reuse",
        str(tmp_path / "done.json"),
    ]
    assert refinetune.main(args) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["runs"] == {
        "ours-v1": [{**records["ours"], "source_finetune": None}],
        "tao": [{**records["tao"], "source_finetune": None}],
    }
    # ours and random selecting the same configuration train one encoder: the second takes the first's record
    assert refinetune.same_encoder(sel(2e-4), {**sel(2e-4), "trial_id": "other"})
    assert not refinetune.same_encoder(sel(2e-4), {**sel(2e-4), "epoch": 2}) and not refinetune.same_encoder(
        None, sel(1)
    )
    assert not (tmp_path / "r" / "ours-v1-0").exists()
    assert out["arms_from"]["tao"].endswith("old.json:tao") and out["arms_from"]["ours-v1"].endswith(
        "old.json:ours"
    )
    # the new `ours` selected another encoder: the earlier record is not taken for it
    earlier, _ = refinetune.reusable([str(tmp_path / "done.json")], 40)
    assert [r["selected"] for r in earlier[("ours", 0)]] == [sel(2e-3)] != [sources["ours"][1][0]["selected"]]
    # two earlier JSONs that each call another encoder `ours` (today's default's and the previous one's): each
    # arm takes the record of its own selection, whichever JSON holds it, and nothing is trained
    mine = {"seed": 0, "selected": sel(2e-4), "pretrain": {"reproduced": True}, "finetune": {"top1": 0.99}}
    (tmp_path / "done_new.json").write_text(json.dumps({"finetune_epochs": 40, "runs": {"ours": [mine]}}))
    both = [*args[: args.index("--arms")], "--arms", "ours", "ours-v1", "tao", *args[args.index("--seeds") :]]
    both += [str(tmp_path / "done_new.json")]  # after done.json on --reuse
    assert refinetune.main(both) == 0
    runs = json.loads((tmp_path / "out.json").read_text())["runs"]
    assert runs["ours"] == [{**mine, "source_finetune": None}]
    assert runs["ours-v1"] == [{**records["ours"], "source_finetune": None}]
    assert not (tmp_path / "r" / "ours-0").exists()
    # arms that pretrained for different lengths are refused
    old["budget"]["epochs"] = 5
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert (
        refinetune.main(
            [*args[: args.index("--arms")], "--arms", "ours", "tao", *args[args.index("--seeds") :]]
        )
        == 2
    )


def test_refinetune_trains_the_selected_encoder_again_bit_for_bit(tmp_path, digits_small):
    """The refinetune's claim: pretraining on the CPU is deterministic, so a trial's selected encoder is trained
    again exactly (its train_loss and knn_acc match the report's); a mismatch is reported, not hidden."""
    from benchmarks.search.refinetune import pretrain_selected, reproduction

    data = {"train": digits_small["train"], "val": digits_small["val"], "test": digits_small["val"]}
    run = {"seed": 0, "selected": {"epoch": 1, "config": {"train.optim.lr": 1e-3}}}
    first = reproduction(run, pretrain_selected(run, "ours", 1, data, tmp_path / "a"))
    assert first["reproduced"] is False and first["train_loss"] is not None  # nothing to compare with
    run["selected"].update(train_loss=first["train_loss"], knn_acc=first["knn_acc"])
    again = pretrain_selected(run, "ours", 1, data, tmp_path / "b")
    assert reproduction(run, again) == {**first, "reproduced": True}
    run["selected"]["train_loss"] += 1e-3
    assert reproduction(run, again)["reproduced"] is False


def test_finetune_without_an_encoder_is_the_recipe_from_scratch_and_is_read_back(tmp_path, digits_small):
    import torch

    from benchmarks.search.downstream import finetune_top1
    from mae.layout import TrainLayout

    data = {"train": digits_small["train"], "val": digits_small["val"], "test": digits_small["val"]}
    first = finetune_top1(None, data, tmp_path / "ft", epochs=1, seed=5)
    assert 0.0 <= first["top1"] <= 1.0 and first["seconds"] > 0
    ckpt = torch.load(TrainLayout(tmp_path / "ft" / "train").best, map_location="cpu", weights_only=False)
    train = ckpt["hyper_parameters"]["mae"]["spec"]["train"]
    assert train["seed"] == 5 and train["pretrained_model_path"] is None and train["num_epochs"] == 1
    assert finetune_top1(None, data, tmp_path / "ft", epochs=1, seed=5) == first  # read back, timing kept


def test_bootstrap_interval_contains_the_median_and_narrows_with_data():
    few = report.bootstrap_median([0.1, 0.5, 0.9])
    many = report.bootstrap_median([0.1, 0.5, 0.9] * 30)
    assert few[0] <= 0.5 <= few[1] and many[0] <= 0.5 <= many[1]
    assert many[1] - many[0] < few[1] - few[0]


def test_tao_arm_searches_momentum_and_backbone_multiplier_without_effect():
    """TAO's AdamW ignores both: the callback puts the spec's values back before the optimizer is built."""
    from mae.engine.modules import PretrainModule, build_optimizer
    from mae.models import build_mae
    from mae.spec import load_spec

    cfg = load_spec(
        None,
        [
            "model.arch=vit_micro_patch4",
            "dataset.augmentation.input_size=32",
            "train.optim.lr=0.01",
            "train.optim.momentum=0.3",
            "train.optim.backbone_multiplier=0.2",
        ],
    )
    module = PretrainModule(cfg, build_mae(cfg.model.arch), {})
    tao_ignored_settings(cfg).setup(None, module, "fit")
    opt, _ = build_optimizer(module.cfg, module.model, total_steps=4, num_epochs=1)
    assert {g["betas"] for g in opt.param_groups} == {(0.9, 0.95)}
    assert {g["lr"] for g in opt.param_groups} == {0.01}  # no encoder multiplier
    assert cfg.train.optim.momentum == 0.3  # the trial's record keeps the searched value


def test_tao_arm_warmup_is_not_tied_to_num_epochs(tmp_path):
    from automl.plan import plan_search

    space_file = tmp_path / "tao.yaml"
    space_file.write_text(TAO_SPACE)
    overrides = ["num_epochs=3", "dataset.train_data_sources=/x", "model.arch=vit_micro_patch4"]
    tied = plan_search(None, overrides, space_file=space_file)
    with untied_warmup(True):
        untied = plan_search(None, overrides, space_file=space_file)
    warm = "train.optim.warmup_epochs"
    assert tied.space.domain(tied.space[warm], {}).highest() == 2
    assert untied.space.domain(untied.space[warm], {}).highest() == 100
    assert sorted(untied.space.names) == sorted(
        [
            "train.optim.lr",
            "train.optim.weight_decay",
            "train.optim.momentum",
            "train.optim.backbone_multiplier",
            warm,
        ]
    )


def test_the_previous_default_arm_searches_the_absolute_range_the_default_now_scales(tmp_path):
    from automl.plan import plan_search
    from benchmarks.search.arms import ARMS
    from benchmarks.search.harness import DEMO_SPEC

    overrides = ["dataset.train_data_sources=/x", "dataset.val_data_sources=/y"]
    lr = "train.optim.lr"
    ours = plan_search(DEMO_SPEC, overrides).space
    (tmp_path / "v1.yaml").write_text(ARMS["ours-v1"].space)
    v1 = plan_search(DEMO_SPEC, overrides, space_file=tmp_path / "v1.yaml").space
    assert ARMS["random-v1"].space == ARMS["ours-v1"].space and ARMS["random-v1"].options == {
        "algorithm": "random"
    }
    assert (v1[lr].low, v1[lr].high) == (1e-5, 3e-3)
    assert (ours[lr].low, ours[lr].high) == pytest.approx((1e-5, 2.5e-4))  # 4e-5..1e-3 per 256, at batch 64
    assert [p.name for p in v1 if p.name != lr] == [p.name for p in ours if p.name != lr]
    same = [
        dataclasses.replace(v1[p.name], source=p.source, explicit=p.explicit) == p
        for p in ours
        if p.name != lr
    ]
    assert same == [True] * 3  # the rest of the space is today's


@pytest.mark.slow
def test_quick_benchmark_writes_every_arm_seed_curve_and_downstream_figure(tmp_path, monkeypatch):
    out = tmp_path / "search.json"
    # main() below runs in this process and points MLflow at its own store unless one is set: keep it here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.search",
            "--quick",
            "--out",
            str(tmp_path / "runs"),
            "--json",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["runs"]) == {"ours", "tao", "random"} and res["seeds"] == [0, 1]
    for arm, runs in res["runs"].items():
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:
            assert len(r["curve"]) == r["trial_epochs"] >= 1, (arm, r)
            finite = [x for x in r["curve"] if x is not None]
            assert finite == sorted(finite, reverse=True)  # best so far never rises
            if r["selected"] is not None:
                assert 0.0 <= r["finetune"]["top1"] <= 1.0
                assert 0.0 <= r["probe"]["probe_top1"] <= 1.0
                assert r["selected"]["train_loss"] == r["best"]
    f = res["figures"]
    assert set(f["downstream"]["per_arm"]) == {"ours", "tao", "random"}
    assert set(f["downstream"]["vs"]) == {"tao", "random"}
    assert set(f["trial_epochs_to_tao_best"]) == {"ours", "random"}
    assert set(f["equal_trial_epochs"]) == {"tao", "random"}
    assert (tmp_path / "search_curves.png").stat().st_size > 1000

    # a new default's report beside the arms of an earlier one (here: the same run's, `ours` renamed)
    from benchmarks.search.__main__ import main

    again = tmp_path / "again.json"
    args = [
        "--quick",
        "--phase",
        "report",
        "--arms",
        "ours",
        "--out",
        str(tmp_path / "runs"),
        "--json",
        str(again),
    ]
    assert main([*args, "--with-report", f"{out}:ours=ours-v1"]) == 0
    res2 = json.loads(again.read_text())
    assert set(res2["runs"]) == {"ours", "ours-v1", "tao", "random"}
    assert res2["runs"]["ours-v1"] == [
        {**r, "arm": "ours-v1", "from": f"{out}:ours"} for r in res["runs"]["ours"]
    ]
    assert res2["arms"]["ours-v1"].endswith("search.json:ours") and set(
        res2["figures"]["trial_epochs_to_tao_best"]
    ) == {"ours", "ours-v1", "random"}
    res["budget"]["epochs"] = 2  # another budget is refused
    out.write_text(json.dumps(res))
    assert main([*args, "--with-report", str(out)]) == 2


def test_candidate_sampler_changes_only_tpe_and_keeps_the_startup_trials():
    import automl.tuner as tuner
    from benchmarks.search.arms import candidate_sampler

    plain = tuner.make_sampler("tpe", 0, 12)
    with candidate_sampler({"multivariate": True, "group": True, "constant_liar": True}):
        cand = tuner.make_sampler("tpe", 0, 12)
        rand = tuner.make_sampler("random", 0, 12)
    assert cand._multivariate and cand._group and cand._constant_liar
    assert not plain._multivariate and cand._n_startup_trials == plain._n_startup_trials == 4
    assert type(rand).__name__ == "RandomSampler"
    assert not tuner.make_sampler("tpe", 0, 12)._multivariate  # restored
    # the round's searcher is built through the module-level name the patch replaces (a move of that code
    # elsewhere would leave candidate arms on plain TPE without a word)
    assert "make_sampler" in tuner.search_algorithm.__code__.co_names


def test_each_candidate_is_paired_by_seed_against_every_other_arm():
    from benchmarks.search.report import candidates_vs

    def rec(seed, top1):
        return {"seed": seed, "selected": {"config": {}}, "finetune": {"top1": top1}}

    runs = {
        "cand-x": [rec(0, 0.9), rec(1, 0.8), rec(2, 0.7)],
        "ours": [rec(0, 0.8), rec(1, 0.8), rec(2, 0.9)],
        "random": [rec(1, 0.5)],  # only seed 1 pairs
    }
    vs = candidates_vs(runs, ["cand-x", "ours", "random"])
    assert set(vs) == {"cand-x"} and set(vs["cand-x"]) == {"ours", "random"}
    ours = vs["cand-x"]["ours"]["finetune_top1"]
    assert ours["diff"] == pytest.approx([0.1, 0.0, -0.2]) and ours["cand-x_ge"] == "2 of 3"
    assert ours["cand-x_wins_ties_losses"] == [1, 1, 1]
    assert vs["cand-x"]["random"]["finetune_top1"]["diff"] == pytest.approx([0.3])
    assert candidates_vs(runs, ["ours", "random"]) == {}  # no candidate, no figures
