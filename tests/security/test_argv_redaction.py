"""The training command ``hotcb launch`` records (``hotcb.run.json``, served by the dashboard)
keeps no secret, and keeps every ordinary flag: ``hotcb branch`` prints it to run again."""

from __future__ import annotations

import pytest

from hotcb.runfiles import redact_argv

HIDDEN = [
    (["--hf-token", "hf_x"], ["--hf-token", "***"]),
    (["--hf_token", "hf_x"], ["--hf_token", "***"]),
    (["--token=X"], ["--token=***"]),
    (["--api-key=X", "--wandb-api-key", "k"], ["--api-key=***", "--wandb-api-key", "***"]),
    (["--hfToken", "abc", "--apiKey", "abc"], ["--hfToken", "***", "--apiKey", "***"]),
    (["--api-key", "-abc123", "--token", "-"], ["--api-key", "***", "--token", "***"]),
    (["--pass", "x", "--passphrase", "y", "--gh-pat", "z"],
     ["--pass", "***", "--passphrase", "***", "--gh-pat", "***"]),
    (["env", "OPENAI_API_KEY=sk", "AWS_SECRET_ACCESS_KEY=z", "python"],
     ["env", "OPENAI_API_KEY=***", "AWS_SECRET_ACCESS_KEY=***", "python"]),
    (["trainer.hf_token=abc", "+model.api_key=abc"], ["trainer.hf_token=***", "+model.api_key=***"]),
    (["--header", "Authorization: Bearer abc"], ["--header", "Authorization: Bearer ***"]),
    (["--db", "postgresql://me:pw@db/x", "--url", "http://h/?token=abc"],
     ["--db", "postgresql://me:***@db/x", "--url", "http://h/?token=***"]),
    (["bash", "-c", "HF_TOKEN=abc python t.py --token abc --lr 0.1"],
     ["bash", "-c", "HF_TOKEN=*** python t.py --token *** --lr 0.1"]),
    (["-H", "X-Api-Key: abc", "-H", "Authorization:Bearer abc", "KAGGLE_KEY=k", "--db_pw", "x"],
     ["-H", "X-Api-Key: ***", "-H", "Authorization:Bearer ***", "KAGGLE_KEY=***", "--db_pw", "***"]),
    (["--password", "12345678", "--api-key=31415926535", "--secret", "1e9", "--db_pw=0.5"],
     ["--password", "***", "--api-key=***", "--secret", "***", "--db_pw=***"]),
    (["--webhook", "https://hooks.slack.com/services/T0/B0/S3CRET", "--on",
      "https://discord.com/api/webhooks/123/S3CRET?wait=true"],
     ["--webhook", "https://hooks.slack.com/***", "--on",
      "https://discord.com/api/webhooks/***?wait=true"]),
    (["git", "clone", "https://ghp_S3CRET@github.com/me/x"],
     ["git", "clone", "https://***@github.com/me/x"]),
    (["--url", "https://s3/b?X-Amz-Signature=abc&X-Amz-Security-Token=def&client_secret=h"],
     ["--url", "https://s3/b?X-Amz-Signature=***&X-Amz-Security-Token=***&client_secret=***"]),
]  # fmt: skip

KEPT = [
    ["--tokenizer", "t5", "--max-tokens", "5", "--token-file", "/run/secrets/hf"],
    ["--sort-key", "name", "--metric-key", "val/loss", "--monitor-key", "val_loss"],
    ["--key-metric", "acc", "--key", "3", "--auth", "none", "--auth-url", "http://x"],
    ["--input-key", "text", "--cache-key", "a", "--lr", "-1", "--seed", "0"],
    ["--eos_token", "</s>", "--pad-token", "<pad>", "model.mask_token=[MASK]", "--pad_token_id",
     "0"],
    ["--max_token", "512", "--eod_token", "<|endoftext|>", "--use_auth_token", "True"],
    ["--num_pass", "2", "--forward_pass", "--augment", "basic", "data/x", "--level", "token", "a"],
]  # fmt: skip


@pytest.mark.parametrize(("argv", "recorded"), HIDDEN)
def test_a_secret_on_the_command_is_recorded_as_stars(argv: list[str], recorded: list[str]) -> None:
    assert redact_argv(argv) == recorded


@pytest.mark.parametrize("argv", KEPT)
def test_an_ordinary_flag_is_recorded_as_given(argv: list[str]) -> None:
    assert redact_argv(argv) == argv
