"""server/settings.py through pydantic-settings: every field has its variable, an empty variable
is unset, lists are comma-separated, and a bad value names the variable. In-process, no server."""

from __future__ import annotations

from pathlib import Path

import pytest
from gradwatch.server.settings import Settings, SettingsError

# A valid value unlike the default, by annotation (a field of a new kind needs a line here).
SAMPLE = {str: "127.0.0.2", int: "7", float: "0.5", bool: "0", Path: "/tmp/elsewhere",
          list[str]: "a.example.com, b.example.com"}
# ...or by name, where the kind's sample is not a valid value of the field.
BY_NAME = {"token": "a-token-long-enough", "launcher": "ray", "public_url": "http://gw.example.com:8000",
           "gpus": "1,3", "ray_address": "head:6379", "ws_compression": "on"}
VARIABLE = {"ray_address": "RAY_ADDRESS"}


def sample(name: str) -> str:
    return BY_NAME.get(name) or SAMPLE[Settings.model_fields[name].annotation]


def test_every_field_is_read_from_its_variable(tmp_path: Path) -> None:
    env = {VARIABLE.get(n, f"GRADWATCH_{n.upper()}"): sample(n) for n in Settings.model_fields}
    got = Settings.from_env(env)
    unread = [n for n in Settings.model_fields if getattr(got, n) == getattr(Settings(), n)]
    assert unread == [], f"fields whose variable changed nothing: {unread}"
    assert got.allowed_hosts == ["a.example.com", "b.example.com"] and got.gpus == ["1", "3"]
    assert got.prefork is False and got.data_dir == Path("/tmp/elsewhere") and not got.token_generated


def test_empty_variables_are_unset_and_sizes_take_units(tmp_path: Path) -> None:
    s = Settings.from_env({"GRADWATCH_DATA_DIR": str(tmp_path), "GRADWATCH_PORT": "", "GRADWATCH_TOKEN": "",
                           "GRADWATCH_ALLOWED_HOSTS": "", "GRADWATCH_RUN_MAX_BYTES": "512M"})
    assert s.port == 8000 and s.allowed_hosts == [] and s.token_generated and s.run_max_bytes == 512 * 2**20


@pytest.mark.parametrize(("env", "says"), [
    ({"GRADWATCH_PORT": "http"}, "GRADWATCH_PORT='http': Input should be a valid integer"),
    ({"GRADWATCH_MAX_CONCURRENT": "0"}, "GRADWATCH_MAX_CONCURRENT='0': Input should be greater than or equal to 1"),
    ({"GRADWATCH_HEARTBEAT_TIMEOUT_S": "0"}, "GRADWATCH_HEARTBEAT_TIMEOUT_S='0': Input should be greater than 0"),
    ({"GRADWATCH_WORKER_MEMORY": "lots"}, "GRADWATCH_WORKER_MEMORY='lots': expected bytes"),
    ({"GRADWATCH_PREFORK": "maybe"}, "GRADWATCH_PREFORK='maybe': Input should be a valid boolean"),
    ({"GRADWATCH_TOKEN": "short"}, "GRADWATCH_TOKEN must be at least 8 characters"),
    ({"GRADWATCH_WS_COMPRESSION": "yes"}, "GRADWATCH_WS_COMPRESSION='yes': Input should be 'auto', 'on' or 'off'"),
])
def test_a_bad_value_names_its_variable(tmp_path: Path, env: dict[str, str], says: str) -> None:
    with pytest.raises(SettingsError) as e:
        Settings.from_env({"GRADWATCH_DATA_DIR": str(tmp_path), **env})
    assert str(e.value).startswith(says), str(e.value)


def test_a_flag_is_named_as_the_flag_and_a_token_never_shown(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^--port=70000: Input should be less than or equal to 65535"):
        Settings.from_env({"GRADWATCH_DATA_DIR": str(tmp_path)}, port=70000)
    with pytest.raises(SettingsError) as e:
        Settings.from_env({"GRADWATCH_TOKEN": "sh0rt"})
    assert "sh0rt" not in str(e.value)


def test_settings_built_in_code_read_no_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRADWATCH_MAX_CONCURRENT", "9")
    assert Settings(data_dir=tmp_path).max_concurrent == 2  # tests build theirs from arguments only
    assert Settings.from_env().max_concurrent == 9


@pytest.mark.parametrize(("client", "local"), [
    (("127.0.0.1", 5), True), (("127.8.0.2", 5), True), (("::1", 5), True), (("::ffff:127.0.0.1", 5), True),
    (None, True),  # a Unix socket
    (("10.0.0.7", 5), False), (("192.168.1.20", 5), False), (("::ffff:10.0.0.7", 5), False),
    (("fe80::1%eth0", 5), False), (("2001:db8::1", 5), False), (("not-an-address", 5), False),
])
def test_websocket_compression_is_off_only_for_peers_on_this_machine(client: tuple | None, local: bool) -> None:
    from gradwatch.server.protocol import is_local_peer, websocket_options

    assert is_local_peer(client) is local
    assert websocket_options("off") == {"ws_per_message_deflate": False}
    assert websocket_options("on") == {"ws_per_message_deflate": True}
    assert websocket_options("auto")["ws"].__name__ == "PeerCompressionProtocol"
