from orchestrator.spec import load_spec


def test_set_overrides_win_over_the_chosen_profile():
    spec = load_spec(
        "experiments/topk.yaml",
        ["profile=gpu", "resources.gpus_per_worker=0.25", "train.steps=7"],
        gpus_available=1,
    )
    assert spec.resources.gpus_per_worker == 0.25  # the profile says 0.5
    assert spec.train["steps"] == 7  # the profile says 200
    assert spec.train["model"] == "medium"  # the rest of the profile still applies


def test_profile_alone_applies():
    spec = load_spec("experiments/topk.yaml", ["profile=gpu"], gpus_available=1)
    assert spec.resources.gpus_per_worker == 0.5 and spec.train["steps"] == 200
