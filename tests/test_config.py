import pytest
import yaml

from micro import MicroError
from micro.cli.train import parse_train_args
from micro.config import CONFIG_DIR, Config, read_overrides, resolve_config
from micro.envs import TASKS


def test_defaults_are_spec():
    c = Config()
    assert (c.n_ensemble, c.n_elites, c.dynamics_hidden_dims) == (7, 5, (200, 200, 200, 200))
    assert c.dynamics_weight_decay == (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)
    assert (c.hidden_dims, c.num_q_ensemble, c.gamma, c.tau) == ((256, 256), 2, 0.99, 0.005)
    assert (c.actor_lr, c.critic_lr, c.alpha_lr, c.dynamics_lr) == (1e-4, 3e-4, 1e-4, 1e-3)
    assert (c.rollout_freq, c.rollout_batch_size, c.model_retain_epochs) == (1000, 50_000, 5)
    assert (c.num_samples, c.real_ratio, c.batch_size) == (10, 0.05, 256)
    assert (c.epoch, c.step_per_epoch, c.eval_freq, c.eval_episodes) == (3000, 1000, 10, 10)
    assert c.matmul_precision == "highest"  # exact float32 unless a user opts in


@pytest.mark.parametrize("algo", ["micro", "mobile", "mopo"])
@pytest.mark.parametrize("task", TASKS)
def test_every_task_has_a_config_that_loads(task, algo):
    assert (CONFIG_DIR / algo / f"{task}.yaml").exists()
    cfg = resolve_config(task, overrides={"algo": algo})
    assert (cfg.task, cfg.algo) == (task, algo)


def test_published_baseline_values():
    # MOBILE: defaults over MICRO's, then the task's (SPEC section 6)
    c = resolve_config("walker2d-expert-v2", overrides={"algo": "mobile"})
    assert (c.alpha, c.deterministic_backup, c.rollout_length, c.penalty_coef) == (
        0.2,
        True,
        1,
        1.0,
    )
    c = resolve_config("hopper-medium-v2", overrides={"algo": "mobile"})
    assert (c.rollout_length, c.penalty_coef, c.auto_alpha, c.max_epochs_since_update) == (
        5,
        1.5,
        False,
        5,  # MICRO's hopper-medium stops after 10; MOBILE keeps the default
    )
    c = resolve_config("halfcheetah-medium-expert-v2", overrides={"algo": "mobile"})
    assert (c.penalty_coef, c.real_ratio, c.deterministic_backup) == (1.0, 0.5, True)
    # MOPO: OfflineRL-Kit's defaults, the authors' (h, lambda) per task
    c = resolve_config("hopper-expert-v2", overrides={"algo": "mopo"})
    assert (c.rollout_length, c.penalty_coef, c.auto_alpha) == (1, 2.5, True)
    c = resolve_config("halfcheetah-medium-v2", overrides={"algo": "mopo"})
    assert (c.rollout_length, c.penalty_coef, c.deterministic_backup) == (1, 1.0, False)
    c = resolve_config("walker2d-medium-expert-v2", overrides={"algo": "mopo"})
    assert (c.rollout_length, c.penalty_coef) == (1, 2.0)


def test_algo_from_a_preset_and_flags_over_it(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("algo: mobile\npenalty_coef: 0.25\n")
    c = resolve_config("hopper-medium-v2", presets=[str(preset)])
    assert (c.algo, c.penalty_coef, c.rollout_length) == ("mobile", 0.25, 5)
    c = resolve_config("hopper-medium-v2", presets=[str(preset)], overrides={"algo": "mopo"})
    assert (c.algo, c.penalty_coef) == ("mopo", 0.25)  # the preset's value still applies
    with pytest.raises(MicroError, match="unknown algo 'cql'"):
        resolve_config("hopper-medium-v2", overrides={"algo": "cql"})


def test_published_task_overrides():
    c = resolve_config("hopper-medium-v2")
    assert (c.rollout_length, c.penalty_coef, c.auto_alpha, c.max_epochs_since_update) == (
        5,
        1.0,
        False,
        10,
    )
    c = resolve_config("halfcheetah-medium-expert-v2")
    assert (c.real_ratio, c.deterministic_backup, c.max_epochs_since_update) == (0.5, True, 30)
    c = resolve_config("walker2d-medium-v2")
    assert (c.dynamics_max_epochs, c.max_epochs_since_update) == (30, 30)
    c = resolve_config("walker2d-medium-replay-v2")
    assert (c.rollout_length, c.penalty_coef, c.real_ratio) == (1, 0.2, 0.5)
    c = resolve_config("hopper-medium-expert-v2")
    assert (c.rollout_length, c.deterministic_backup) == (10, True)


def test_cli_flags_parse_by_type():
    cfg = parse_train_args(
        [
            "--task",
            "hopper-medium-v2",
            "--penalty_coef",
            "0.3",
            "--auto_alpha",
            "true",
            "--dynamics_hidden_dims",
            "10",
            "20",
            "30",
            "--dynamics_weight_decay",
            "1e-5",
            "1e-5",
            "1e-5",
            "1e-5",
            "--dynamics_max_epochs",
            "7",
            "--deterministic_backup",
            "--seed",
            "3",
        ]
    ).cfg
    assert cfg.penalty_coef == 0.3 and cfg.auto_alpha is True and cfg.seed == 3
    assert cfg.dynamics_hidden_dims == (10, 20, 30)
    assert cfg.dynamics_max_epochs == 7 and cfg.deterministic_backup is True
    assert cfg.max_epochs_since_update == 10  # the task file still applies
    cfg = parse_train_args(["--task", "walker2d-medium-v2", "--dynamics_max_epochs", "none"]).cfg
    assert cfg.dynamics_max_epochs is None
    cfg = parse_train_args(["--task", "hopper-medium-v2", "--auto_alpha", "false"]).cfg
    assert cfg.auto_alpha is False


def test_layering_order(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("penalty_coef: 0.25\nrollout_length: 2\n")
    cfg = parse_train_args(
        ["--task", "hopper-medium-v2", "--config", str(preset), "--rollout_length", "3"]
    ).cfg
    assert (cfg.penalty_coef, cfg.rollout_length, cfg.auto_alpha) == (0.25, 3, False)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--penalty_coef", "abc"], "bad value for penalty_coef: 'abc' is not a finite number"),
        (["--auto_alpha", "maybe"], "bad value for auto_alpha: 'maybe' is not true or false"),
        (["--epoch", "1.5"], "bad value for epoch: '1.5' is not an integer"),
        (["--real_ratio", "2"], "bad config: real_ratio must be in [0, 1]"),
        (["--task", "hopper-v3"], "unknown task 'hopper-v3'"),
        (["--dynamics_max_epochs", "0"], "dynamics_max_epochs must be positive"),
        (["--snapshot_freq", "0"], "snapshot_freq must be positive (or none)"),
        (["--matmul_precision", "low"], "matmul_precision must be one of highest, high, medium"),
    ],
)
def test_bad_values_raise_one_line(argv, message):
    with pytest.raises(MicroError) as err:
        parse_train_args(argv)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_flag_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_train_args(["--penalty", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unrecognized arguments: --penalty 1" in err


def test_yaml_errors(tmp_path):
    bad_key = tmp_path / "k.yaml"
    bad_key.write_text("penalty: 1\n")
    with pytest.raises(MicroError, match="unknown config key 'penalty'"):
        read_overrides(bad_key)
    bad_type = tmp_path / "t.yaml"
    bad_type.write_text("rollout_length: 1.5\n")
    with pytest.raises(MicroError, match=r"rollout_length .* is not of type int"):
        read_overrides(bad_type)
    bad_list = tmp_path / "l.yaml"
    bad_list.write_text("hidden_dims: 256\n")
    with pytest.raises(MicroError, match="expected a list of int"):
        read_overrides(bad_list)


def test_to_dict_round_trips_through_yaml():
    from micro.config import config_from_dict

    cfg = resolve_config("walker2d-medium-expert-v2")
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg


def test_resume_flags():
    args = parse_train_args(["--resume", "runs/x", "--device", "cpu", "--no_progress"])
    assert (args.cfg, args.resume_dirs, args.device, args.progress) == (
        None,
        ["runs/x"],
        "cpu",
        False,
    )
    with pytest.raises(MicroError, match="drop --penalty_coef"):
        parse_train_args(["--resume", "runs/x", "--penalty_coef", "1"])
    assert parse_train_args(["--resume", "runs/x", "runs/y"]).resume_dirs == ["runs/x", "runs/y"]
    with pytest.raises(MicroError, match="drop --seeds"):
        parse_train_args(["--resume", "runs/x", "--seeds", "1", "2"])


def test_seeds_flags():
    args = parse_train_args(["--task", "hopper-medium-v2", "--seeds", "4", "2"])
    assert args.seeds == [4, 2] and args.cfg.seed == 4
    with pytest.raises(MicroError, match="--seed or --seeds"):
        parse_train_args(["--task", "hopper-medium-v2", "--seeds", "4", "--seed", "1"])


def test_help_explains_every_commented_key(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_train_args(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert "--penalty_coef V beta (MICRO U, MOBILE std) or lambda (MOPO): penalty weight" in text
    assert "--algo V micro | mobile | mopo" in text
    assert "no 1% improvement (default 5, int)" in text
    assert "--gamma V discount factor (default 0.99, float)" in text
    undocumented = [line for line in text.split("--")[1:] if " V default " in line]
    assert not undocumented, undocumented  # every config key says what it is
