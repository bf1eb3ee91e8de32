"""micro/policy_file.py: the policy file's versions and what it refuses."""

import pytest
import torch

from micro import MicroError
from micro.policy_file import load_policy
from micro.robustness import Attack


def test_v1_policy_files_still_load(smoke_run, tmp_path):
    """Files written before the format recorded the algorithm are MICRO policies."""
    from micro.policy_file import load_policy

    blob = torch.load(smoke_run[0] / "policy.pt", weights_only=True)
    old = {k: v for k, v in blob.items() if k != "algo"}
    old.update(format="micro-policy-v1", obs_mean=torch.zeros(11))
    torch.save(old, tmp_path / "old.pt")
    policy = load_policy(tmp_path / "old.pt", None, torch.device("cpu"))
    assert (policy.algo, policy.task) == ("micro", "hopper-medium-v2")
    torch.testing.assert_close(torch.as_tensor(policy.obs_std).float(), blob["obs_std"])


def test_policy_with_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "micro-policy-v1", "payload": object.__new__(Attack)}, path)
    with pytest.raises(MicroError, match="cannot load policy file"):
        load_policy(path, "hopper-medium-v2", torch.device("cpu"))
