import subprocess
import sys

import pytest

from inspector.config import ConfigError, load_settings, parse_overrides


def test_defaults_bind_loopback_only(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.ingest.endpoint.startswith("tcp://127.0.0.1:")
    assert s.publish.endpoint.startswith("tcp://127.0.0.1:")
    assert s.metrics.host == "127.0.0.1"


def test_precedence_defaults_toml_env_cli(monkeypatch, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[batching]\nmax_batch = 4\nmax_delay_ms = 3\nqueue_size = 11\n")
    monkeypatch.setenv("INSPECTOR_BATCHING__MAX_DELAY_MS", "7")
    monkeypatch.setenv("INSPECTOR_BATCHING__QUEUE_SIZE", "12")
    s = load_settings(cfg, ["batching.queue_size=13"])
    assert s.batching.max_batch == 4  # toml over default
    assert s.batching.max_delay_ms == 7  # env over toml
    assert s.batching.queue_size == 13  # command line over env
    assert s.batching.deadline_ms == 2000  # default


def test_unknown_and_invalid_keys_are_named(monkeypatch, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[batching]\nmax_bach = 4\n[engines]\nthreshold = 3\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "batching.max_bach: Extra inputs are not permitted" in err.value.errors
    assert any(e.startswith("engines.threshold:") for e in err.value.errors)
    monkeypatch.setenv("INSPECTOR_RING__SLOTZ", "3")
    with pytest.raises(ConfigError, match=r"ring\.slotz"):
        load_settings()


def test_bad_sources_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[batching\n")
    with pytest.raises(ConfigError):
        load_settings(bad)
    with pytest.raises(ConfigError, match=r"KEY\.PATH=VALUE"):
        parse_overrides(["nonsense"])


def test_check_config_command_names_the_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[publish]\nheartbeat_interval_s = -1\n")
    out = subprocess.run(
        [sys.executable, "-m", "inspector", "check-config", "--config", str(cfg)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "error: publish.heartbeat_interval_s:" in out.stderr


def test_shipped_config_files_are_valid_and_documented():
    from pathlib import Path

    from inspector.config import Settings

    repo = Path(__file__).resolve().parents[2]
    shipped = load_settings(repo / "config" / "inspector.toml")
    assert shipped.model_dump(exclude={"daemon_id"}) == Settings().model_dump(exclude={"daemon_id"})
    example = load_settings(repo / "config" / "example-line.toml")
    assert example.batching.deadline_ms == 500


def test_the_shipped_defaults_file_lists_every_key_with_its_meaning():
    from pathlib import Path

    from inspector.config import render_defaults

    repo = Path(__file__).resolve().parents[2]
    assert (repo / "config" / "inspector.toml").read_text() == render_defaults(), (
        "config/inspector.toml is stale: python -c 'from inspector.config import render_defaults; "
        'print(render_defaults(), end="")\' > config/inspector.toml'
    )
