"""``hotcb.adapters.LazyEnv``: the env an adapter hands over, built only as far as it is read."""

from __future__ import annotations

from typing import Any

import pytest

from hotcb.adapters import LazyEnv

KEYS = frozenset({"step", "phase", "optimizer", "metrics"})


def _env(calls: list[str]) -> LazyEnv:
    def fill(key: str, values: dict[str, Any]) -> None:
        calls.append(key)
        if key == "metrics":
            values["metrics"] = {"loss": 1.0}
        else:
            values["optimizer"] = "opt"

    return LazyEnv({"step": 3, "phase": "train"}, KEYS, fill)


def test_what_the_idle_path_reads_builds_nothing() -> None:
    calls: list[str] = []
    env = _env(calls)
    assert env["step"] == 3 and env.get("phase") == "train"
    assert "metrics" in env and "optimizer" in env
    assert "model" not in env and env.get("model") is None and env.get("model", 7) == 7
    with pytest.raises(KeyError):
        env["model"]
    assert len(env) == 4
    assert calls == []


def test_a_key_is_built_on_first_read_once() -> None:
    calls: list[str] = []
    env = _env(calls)
    assert env["metrics"] == {"loss": 1.0}
    assert env.get("metrics") == {"loss": 1.0}
    assert calls == ["metrics"]
    assert env.get("optimizer") == "opt" and env["optimizer"] == "opt"
    assert calls == ["metrics", "optimizer"]


def test_it_is_a_mapping_like_the_dict_it_stands_for() -> None:
    calls: list[str] = []
    env = _env(calls)
    full = {"step": 3, "phase": "train", "optimizer": "opt", "metrics": {"loss": 1.0}}
    assert dict(env) == full
    assert env == full
    assert sorted(env) == sorted(full) and sorted(calls) == ["metrics", "optimizer"]
