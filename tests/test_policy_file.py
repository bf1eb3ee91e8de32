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


def _flip_bytes_in_a_critic_tensor(src, dst):
    """64 bytes of a critic weight flipped in the file itself (torch does not check its zip's
    CRCs, so this loads): find the tensor's bytes in the file and invert them."""
    blob = torch.load(src, weights_only=True)
    name = sorted(k for k in blob["critics"] if k.endswith("weight"))[0]
    raw = blob["critics"][name].contiguous().view(-1).numpy().tobytes()
    data = bytearray(src.read_bytes())
    at = data.find(raw[:256])
    assert at > 0
    data[at + 64 : at + 128] = bytes(b ^ 0xFF for b in data[at + 64 : at + 128])
    dst.write_bytes(bytes(data))
    return name


def test_a_policy_file_records_a_digest_and_damage_is_refused(smoke_run, tmp_path):
    src = smoke_run[0] / "policy.pt"
    blob = torch.load(src, weights_only=True)
    assert len(blob["digest"]) == 64
    damaged = tmp_path / "damaged.pt"
    name = _flip_bytes_in_a_critic_tensor(src, damaged)
    loaded = torch.load(damaged, weights_only=True)  # torch itself loads it without a word
    assert not torch.equal(loaded["critics"][name], blob["critics"][name])
    with pytest.raises(MicroError, match="is damaged: its tensors do not match the digest"):
        load_policy(damaged, None, torch.device("cpu"))


def test_a_policy_file_before_digests_loads_with_a_note(smoke_run, tmp_path, capsys):
    blob = torch.load(smoke_run[0] / "policy.pt", weights_only=True)
    del blob["digest"]
    torch.save(blob, tmp_path / "old.pt")
    load_policy(tmp_path / "old.pt", None, torch.device("cpu"))
    assert "predates policy-file digests" in capsys.readouterr().err


def _variant(smoke_run, tmp_path, change, digest=True):
    from micro.policy_file import _tensors
    from micro.utils import tensor_digest

    blob = torch.load(smoke_run[0] / "policy.pt", weights_only=True)
    change(blob)
    if digest and "obs_std" in blob and "critics" in blob:
        blob["digest"] = tensor_digest(_tensors(blob))  # consistent: the damage is the content
    torch.save(blob, tmp_path / "p.pt")
    return tmp_path / "p.pt"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: b.pop("obs_std"), "lacks obs_std: it is incomplete"),
        (lambda b: b.pop("critics"), "lacks critics: it is incomplete"),
        (lambda b: b.update(obs_std=torch.ones(5)), r"obs_std of shape \(5,\), not \(11,\)"),
        (lambda b: b["obs_std"].fill_(float("nan")), "non-finite values in obs_std"),
        (lambda b: b.update(hidden_dims=[64, 64]), r"is \[32, 11\], not the \[64, 11\] its"),
    ],
)
def test_damaged_policy_files_are_one_line(smoke_run, tmp_path, change, message):
    path = _variant(smoke_run, tmp_path, change)
    with pytest.raises(MicroError, match=message) as caught:
        load_policy(path, None, torch.device("cpu"))
    assert "\n" not in str(caught.value)


def test_a_file_that_is_not_a_policy_never_suggests_loading_it_unsafely(tmp_path):
    path = tmp_path / "policy.pt"
    path.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(MicroError) as caught:
        load_policy(path, None, torch.device("cpu"))
    assert "weights_only" not in str(caught.value) and "\n" not in str(caught.value)
    assert "cannot load policy file" in str(caught.value)
