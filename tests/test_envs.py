import warnings

import mujoco
import numpy as np
import pytest
import torch

from micro import MicroError
from micro.envs import (
    REF_RETURNS,
    halfcheetah_done,
    hopper_done,
    make_env,
    normalized_score,
    parse_task,
    versioned_sim,
    walker2d_done,
)


def test_parse_task():
    t = parse_task("walker2d-medium-replay-v2")
    assert (t.env, t.kind, t.obs_dim, t.act_dim) == ("walker2d", "medium-replay", 17, 6)
    assert t.d4rl_filename == "walker2d_medium_replay-v2.hdf5"
    with pytest.raises(MicroError, match="unknown task"):
        parse_task("ant-medium-v2")


@pytest.mark.parametrize("env", ["hopper", "halfcheetah", "walker2d"])
def test_normalized_score_endpoints(env):
    low, high = REF_RETURNS[env]
    assert normalized_score(env, low) == pytest.approx(0.0)
    assert normalized_score(env, high) == pytest.approx(100.0)
    assert normalized_score("hopper", 1000.0) == pytest.approx(
        100 * (1000 + 20.272305) / 3254.572305
    )


def test_hopper_termination_hand_picked():
    ok = torch.tensor([1.25, 0.0] + [0.0] * 9)
    rows = [ok.clone() for _ in range(6)]
    rows[1][0] = 0.69  # too low
    rows[2][1] = 0.21  # leaning too far
    rows[3][5] = 150.0  # |x| >= 100 (the published abs(x < 100) missed this)
    rows[4][5] = -150.0
    rows[5][7] = float("nan")
    assert hopper_done(torch.stack(rows)).tolist() == [False, True, True, True, True, True]


def test_walker2d_termination_hand_picked():
    ok = torch.tensor([1.25, 0.0] + [0.0] * 15)
    rows = [ok.clone() for _ in range(6)]
    rows[1][0] = 0.79
    rows[2][0] = 2.01
    rows[3][1] = -1.01
    rows[4][1] = 1.01
    rows[5][9] = 100.0
    assert walker2d_done(torch.stack(rows)).tolist() == [False, True, True, True, True, True]


def test_halfcheetah_only_ends_diverged_states():
    x = torch.zeros(3, 17)
    x[1, 0] = -5.0  # any real state: never terminates
    x[2, 16] = 100.0  # a diverged model state
    assert halfcheetah_done(x).tolist() == [False, False, True]


def _random_run(env_name, steps, seed=0):
    env = make_env(env_name)
    return env, _random_steps(env, steps, seed)


@pytest.mark.parametrize(
    "env_name, height, angle", [("hopper", (0.7, np.inf), 0.2), ("walker2d", (0.8, 2.0), 1.0)]
)
def test_d4rl_reward_and_termination(env_name, height, angle):
    """D4RL's v2 (gym v3) rule: r = Δx/dt + 1 − 1e-3·|a|², +1 kept on the terminating step."""
    env, steps = _random_run(env_name, 200)
    dt = env.unwrapped.dt
    assert dt == pytest.approx(0.008)
    for a, x0, x1, obs, r, term in steps:
        assert r == pytest.approx(
            (x1 - x0) / dt + 1.0 - 1e-3 * float(np.sum(np.square(a))), abs=1e-6
        )
        z, ang = obs[0], obs[1]  # qpos[1], qpos[2] after the step
        healthy = height[0] < z < height[1] and abs(ang) < angle
        if env_name == "hopper":
            healthy = healthy and bool(np.all(np.abs(obs[1:]) < 100))
        if not term:
            assert healthy
    assert steps[-1][-1], "a random policy falls within 200 steps"


def test_halfcheetah_reward():
    env, steps = _random_run("halfcheetah", 50)
    for a, x0, x1, _, r, term in steps:
        assert r == pytest.approx(
            (x1 - x0) / env.unwrapped.dt - 0.1 * float(np.sum(np.square(a))), abs=1e-6
        )
        assert not term


def test_walker2d_is_d4rls_model():
    """gym v3 / Gymnasium v4 walker2d has a left foot of friction 1.9 (and a right one of 0.9;
    v5 gives both 1.9)."""
    model = make_env("walker2d").unwrapped.model
    foot = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "foot_left_geom")
    assert model.geom_friction[foot, 0] == pytest.approx(1.9)


def _random_steps(env, steps, seed=0):
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    data, out = env.unwrapped.data, []
    for _ in range(steps):
        a = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        x_before = data.qpos[0]
        obs, r, term, _, _ = env.step(a)
        out.append((a, x_before, data.qpos[0], obs, r, term))
        if term:
            break
    return out


@pytest.mark.parametrize("env_name", ["hopper", "walker2d"])
def test_v5_withholds_the_healthy_reward_on_the_terminating_step(env_name):
    """Minari's robots (-v5): r = Δx/dt + 1·healthy − 1e-3·|a|², so the step that terminates
    pays no +1 (D4RL's -v4 pays it; test_d4rl_reward_and_termination)."""
    env = versioned_sim(env_name, 5).make()
    assert env.spec.id == f"{env_name.capitalize() if env_name == 'hopper' else 'Walker2d'}-v5"
    steps = _random_steps(env, 300)
    dt = env.unwrapped.dt
    for a, x0, x1, _, r, term in steps:
        healthy = 0.0 if term else 1.0
        assert r == pytest.approx((x1 - x0) / dt + healthy - 1e-3 * float(np.sum(a**2)), abs=1e-6)
    assert steps[-1][-1], "a random policy falls within 300 steps"


def test_v5_halfcheetah_reward_is_v4s():
    env = versioned_sim("halfcheetah", 5).make()
    for a, x0, x1, _, r, term in _random_steps(env, 50):
        assert r == pytest.approx(
            (x1 - x0) / env.unwrapped.dt - 0.1 * float(np.sum(a**2)), abs=1e-6
        )
        assert not term


def test_v5_walker2d_feet_have_equal_friction():
    """Walker2d-v5 loads walker2d_v5.xml: both feet have friction 1.9; D4RL's -v4 model has a
    right foot of 0.9 and a left foot of 1.9."""

    def feet(model):
        ids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, g) for g in FEET]
        return [float(model.geom_friction[i, 0]) for i in ids]

    assert feet(versioned_sim("walker2d", 5).make().unwrapped.model) == [1.9, 1.9]
    assert feet(make_env("walker2d").unwrapped.model) == [0.9, 1.9]


FEET = ("foot_geom", "foot_left_geom")


@pytest.mark.parametrize("env_name", ["hopper", "halfcheetah", "walker2d"])
def test_v5_observation_layout_matches_v4(env_name):
    """Same observation (qpos[1:], clipped qvel) and sizes, so one robot's termination function
    and network sizes serve both versions."""
    v4, v5 = make_env(env_name), versioned_sim(env_name, 5).make()
    assert v4.observation_space.shape == v5.observation_space.shape
    o4, _ = v4.reset(seed=3)
    o5, _ = v5.reset(seed=3)
    np.testing.assert_array_equal(o4, o5)  # same start-state noise from the same seed
    d = v5.unwrapped.data
    clip = 10.0 if env_name != "halfcheetah" else np.inf
    np.testing.assert_allclose(
        o5, np.concatenate([d.qpos[1:], np.clip(d.qvel, -clip, clip)]), atol=1e-12
    )


def test_observation_layout_and_clipping():
    env = make_env("hopper")
    obs, _ = env.reset(seed=0)
    d = env.unwrapped.data
    np.testing.assert_allclose(
        obs, np.concatenate([d.qpos[1:], np.clip(d.qvel, -10, 10)]), rtol=0, atol=1e-12
    )
    assert env.spec.max_episode_steps == 1000


# Pins the simulator: these numbers were measured with mujoco 4.0.0 / gymnasium 1.4.0. A different
# mujoco release moves trajectories (SPEC §1), which would silently change every result.
GOLDEN = {
    "hopper": (
        26,
        19.191624642122694,
        [1.2071466904475605, -0.20893115429087514, -0.1829504076215746],
    ),
    "walker2d": (
        50,
        27.192147670469783,
        [0.9940743642911548, -0.7974356591155366, -0.18014635224937928],
    ),
    "halfcheetah": (
        50,
        -30.717585793219104,
        [-0.024863958496359508, 0.03338075845815921, 0.03586530102425271],
    ),
}


@pytest.mark.parametrize("env_name", list(GOLDEN))
def test_pinned_trajectory(env_name):
    n_steps, total, first3 = GOLDEN[env_name]
    env = make_env(env_name)
    obs, _ = env.reset(seed=123)
    rng = np.random.default_rng(0)
    ret, steps = 0.0, 0
    for _ in range(50):
        obs, r, term, _, _ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        ret += r
        steps += 1
        if term:
            break
    assert steps == n_steps
    assert ret == pytest.approx(total, rel=1e-9)
    np.testing.assert_allclose(obs[:3], first3, rtol=1e-9)


def test_building_envs_writes_no_mujoco_log(tmp_path, monkeypatch):
    """MuJoCo 4 warns about Gymnasium's half_cheetah.xml; that must not litter the user's
    working directory with MUJOCO_LOG.TXT, and other warnings must still reach Python."""
    monkeypatch.chdir(tmp_path)
    before = mujoco.get_mju_user_warning()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("hopper", "halfcheetah", "walker2d"):
            make_env(name).close()
    assert list(tmp_path.iterdir()) == []
    assert mujoco.get_mju_user_warning() is before  # the handler is restored


def test_other_mujoco_warnings_are_forwarded(monkeypatch):
    def make_with_warning(env_id, **kwargs):
        handler = mujoco.get_mju_user_warning()
        handler("something else")
        return "env"

    monkeypatch.setattr("micro.envs.gym.make", make_with_warning)
    with pytest.warns(RuntimeWarning, match="MuJoCo: something else"):
        assert make_env("hopper") == "env"
