"""`cfnet policy` without a server: argument checks, settings precedence, unreachable servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cfnet.cli.exit_codes import ExitCode
from cfnet.cli.policy import CliConfig, resolve_settings
from cfnet.clients.http import InvalidInput
from cfnet.core.errors import ConfigError

# --- bad local input never reaches the network -------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--port", "0"], "invalid port 0, must be in range 1-65535"),
    (["--port", "70000-70001"], "invalid port 70000, must be in range 1-65535"),
    (["--port", "9" * 25], "invalid port '9999"),
    (["--port", "\u0661"], "invalid port"),
    (["--port", "8090-8080"],
     "invalid port range 8090-8080, start must be less than or equal to end"),
    (["--port", "http"], "invalid port 'http'"),
    (["--port", "1-2-3"], "invalid port '1-2-3'"),
    (["--port", ""], "invalid port ''"),
    (["--protocol", "icmp"], "invalid protocol 'icmp', specify either udp or tcp"),
    (["--protocol", "TCP"], "invalid protocol 'TCP', specify either udp or tcp"),
])
@pytest.mark.parametrize("command", ["add", "remove"])
def test_bad_input_is_a_usage_error_before_any_request(cfnet, silent_port, command, args, message):
    # The server would never answer: a request would time out rather than fail fast.
    r = cfnet("policy", command, "app-a", "app-b", *args,
              "--api", f"http://127.0.0.1:{silent_port}", "--timeout", "30")
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr.startswith(f"error: {message}")
    assert r.stderr.count("\n") == 1
    assert r.stdout == ""


def test_empty_app_id_is_a_usage_error(cfnet, closed_port):
    r = cfnet("policy", "add", "", "app-b", "--api", f"http://127.0.0.1:{closed_port}")
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr == "error: missing source app id\n"


def test_missing_argument_is_a_usage_error(cfnet):
    r = cfnet("policy", "add", "only-source")
    assert r.exit_code == ExitCode.USAGE


@pytest.mark.parametrize("api", ["127.0.0.1:4002", "ftp://127.0.0.1", "http://"])
def test_bad_api_url_is_a_usage_error(cfnet, api):
    r = cfnet("policy", "list", "--api", api)
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr.startswith("error: invalid API URL")


def test_no_api_url_anywhere(cfnet, clean_env):
    r = cfnet("policy", "list")
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr.startswith("error: no policy server URL: pass --api URL, set CFNET_API")


def test_add_refuses_a_port_above_65535(cfnet, closed_port):
    """Only remove may name a v0 port above 65535 (see test_policy_cli_server)."""
    r = cfnet("policy", "add", "a", "b", "--port", "70000",
              "--api", f"http://127.0.0.1:{closed_port}")
    assert (r.exit_code, r.stderr) == (ExitCode.USAGE,
                                       "error: invalid port 70000, must be in range 1-65535\n")


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "-inf", "1e300", "1e-9", "3601",
                                     "abc", ""])
def test_bad_timeout(cfnet, closed_port, timeout):
    r = cfnet("policy", "list", "--api", f"http://127.0.0.1:{closed_port}", "--timeout", timeout)
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr == (f"error: invalid timeout {timeout!r} from --timeout: must be a number of "
                        "seconds from 0.001 to 3600\n")


@pytest.mark.parametrize("timeout", ["nan", "0.0001", "1e999"])
def test_bad_timeout_in_the_environment(cfnet, closed_port, timeout):
    r = cfnet("policy", "list", "--api", f"http://127.0.0.1:{closed_port}",
              env={"CFNET_TIMEOUT": timeout})
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr.startswith(f"error: invalid timeout {timeout!r} from CFNET_TIMEOUT: ")


def test_timeout_bounds_are_inclusive_and_the_same_everywhere(tmp_path):
    for value in ("0.001", "3600"):
        assert resolve_settings("http://h:1", timeout=value, env={}).timeout == float(value)
        assert resolve_settings("http://h:1", env={"CFNET_TIMEOUT": value}).timeout == float(value)
        cfg = write_config(tmp_path / f"t{value}.toml", f"timeout = {value}\n")
        assert resolve_settings("http://h:1", config=cfg, env={}).timeout == float(value)
    # flag before environment before file
    cfg = write_config(tmp_path / "t.toml", "timeout = 3\n")
    assert resolve_settings("http://h:1", config=cfg, env={"CFNET_TIMEOUT": "4"}).timeout == 4
    assert resolve_settings("http://h:1", config=cfg, timeout="5",
                            env={"CFNET_TIMEOUT": "4"}).timeout == 5


@pytest.mark.parametrize("api, reason", [
    ("http://[::1", "Invalid IPv6 URL"),
    ("http://127.0.0.1:99999", "Port out of range"),
    ("http://127.0.0.1:0", "port 0"),
    ("http://127.0.0.1:x", "Port could not be cast"),
    ("http://127.0.0.1:14002?x=1", "must not have a query or fragment"),
    ("http://127.0.0.1:14002/#frag", "must not have a query or fragment"),
    ("http://127.0.0.1:14002?", "must not have a query or fragment"),
    ("http://127.0.0.1:1 4002", "whitespace or a control character"),
    ("http://127.0.0.1:\x1b[31m", "whitespace or a control character"),
])
def test_malformed_api_url_is_a_usage_error_before_any_request(cfnet, api, reason):
    r = cfnet("policy", "add", "a", "b", "--api", api)
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr.startswith("error: invalid API URL ")
    assert reason in r.stderr and r.stderr.endswith(" (from --api)\n")
    assert "\x1b[" not in r.stderr  # shown escaped, never raw
    assert r.stderr.count("\n") == 1


def test_malformed_api_url_from_the_environment_names_it(cfnet):
    r = cfnet("policy", "list", env={"CFNET_API": "http://[::1"})
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr.endswith("(from CFNET_API)\n")


@pytest.mark.parametrize("token, reason", [
    ("adm\n", "leading or trailing whitespace"),
    (" adm", "leading or trailing whitespace"),
    ("a\rb", "only printable ASCII characters are allowed"),
    ("a\x00b", "only printable ASCII characters are allowed"),
    ("t\u20ac", "only printable ASCII characters are allowed"),
])
def test_bad_token_is_a_usage_error_before_any_request(cfnet, closed_port, token, reason):
    r = cfnet("policy", "list", "--api", f"http://127.0.0.1:{closed_port}", "--token", token)
    assert (r.exit_code, r.stderr) == (ExitCode.USAGE, f"error: invalid token: {reason} "
                                                       "(from --token)\n")


def test_config_directory_is_a_config_error(cfnet, tmp_path, closed_port):
    r = cfnet("policy", "list", "--api", f"http://127.0.0.1:{closed_port}",
              "--config", str(tmp_path))
    assert r.exit_code == ExitCode.CONFIG
    assert r.stderr == f"error: reading config: {tmp_path}: Is a directory\n"


def test_ca_cert_directory_is_a_usage_error(cfnet, tmp_path, closed_port):
    r = cfnet("policy", "list", "--api", f"https://127.0.0.1:{closed_port}",
              "--ca-cert", str(tmp_path))
    assert (r.exit_code, r.stderr) == (ExitCode.USAGE,
                                       f"error: CA certificate file {tmp_path} is not a file\n")


@pytest.mark.parametrize("name, text, message", [
    ("cli.toml", "timeout = nan\n", "key 'timeout': nan must be a number of seconds"),
    ("cli.toml", "timeout = inf\n", "key 'timeout': inf must be"),
    ("cli.toml", "timeout = 0.0001\n", "key 'timeout': 0.0001 must be"),
    ("cli.json", '{"api": "http://127.0.0.1:1", "timeout": 1e999}', "key 'timeout': inf must be"),
    ("cli.json", '{"api": "http://127.0.0.1:1", "timeout": NaN}', "key 'timeout': nan must be"),
    ("cli.toml", 'api = "http://[::1"\n', "key 'api': invalid API URL"),
    ("cli.toml", 'api = "http://h:1?x=1"\n', "key 'api': invalid API URL"),
    ("cli.toml", 'token = "adm\\n"\n', "key 'token': invalid token"),
])
def test_bad_value_in_the_config_file_is_a_config_error(cfnet, tmp_path, name, text, message):
    cfg = write_config(tmp_path / name, text + ("" if name.endswith(".json") else
                                                ('api = "http://127.0.0.1:1"\n'
                                                 if "api =" not in text else "")))
    r = cfnet("policy", "list", "--config", str(cfg))
    assert r.exit_code == ExitCode.CONFIG, r.stderr
    assert r.stderr.startswith("error: invalid config: ") and message in r.stderr
    assert r.stderr.count("\n") == 1


def test_subprocess_bad_timeouts_and_urls_never_trace_back(cfnet_proc, tmp_path):
    cfg = write_config(tmp_path / "cli.json", '{"api": "http://127.0.0.1:1", "timeout": 1e999}')
    for args, code in ((["--api", "http://127.0.0.1:1", "--timeout", "nan"], ExitCode.USAGE),
                       (["--api", "http://[::1"], ExitCode.USAGE),
                       (["--config", str(cfg)], ExitCode.CONFIG)):
        r = cfnet_proc("policy", "list", *args)
        assert r.exit_code == code, r.stderr
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
        assert "Traceback" not in r.stderr


# --- unreachable servers -----------------------------------------------------------------------


@pytest.mark.parametrize("command", [["list"], ["add", "a", "b"], ["remove", "a", "b"], ["tags"],
                                     ["whoami"], ["cleanup"]])
def test_connection_refused(cfnet, closed_port, command):
    url = f"http://127.0.0.1:{closed_port}"
    r = cfnet("policy", *command, "--api", url)
    assert r.exit_code == ExitCode.UNREACHABLE
    assert r.stderr == f"error: cannot connect to {url}: connection refused\n"
    assert r.stdout == ""


def test_timeout_waiting_for_an_answer(cfnet, silent_port):
    url = f"http://127.0.0.1:{silent_port}"
    r = cfnet("policy", "list", "--api", url, "--timeout", "0.2")
    assert r.exit_code == ExitCode.UNREACHABLE
    assert r.stderr.startswith("error: timed out after 0.2s waiting for GET " + url)
    assert r.stderr.count("\n") == 1


def test_https_to_a_plain_port_is_unreachable_not_a_traceback(cfnet, silent_port):
    r = cfnet("policy", "list", "--api", f"https://127.0.0.1:{silent_port}", "--timeout", "0.2")
    assert r.exit_code == ExitCode.UNREACHABLE
    assert r.stderr.startswith("error: ")


def test_subprocess_unreachable_is_one_line_without_traceback(cfnet_proc, closed_port):
    url = f"http://127.0.0.1:{closed_port}"
    r = cfnet_proc("policy", "list", "--app", "some-app", "--api", url)
    assert r.exit_code == ExitCode.UNREACHABLE
    assert r.stderr == f"error: cannot connect to {url}: connection refused\n"
    assert "Traceback" not in r.stderr + r.stdout


def test_subprocess_usage_error(cfnet_proc):
    r = cfnet_proc("policy", "add", "a", "b", "--port", "8090-8080", "--api", "http://127.0.0.1:1")
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr == ("error: invalid port range 8090-8080, start must be less than or equal "
                        "to end\n")


# --- settings: flag, then environment, then config file ----------------------------------------


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_precedence_flag_env_file(tmp_path):
    for name in ("file", "env", "flag"):
        write_config(tmp_path / name / "ca.crt", "")
    cfg = write_config(tmp_path / "cli.toml",
                       'api = "http://file:1"\ntoken = "file-token"\ntimeout = 3\n'
                       f'ca_cert = "{tmp_path}/file/ca.crt"\n')
    env = {"CFNET_API": "http://env:2", "CFNET_TOKEN": "env-token"}
    s = resolve_settings("http://flag:3", "flag-token", config=cfg, env=env)
    assert (s.api, s.token, s.timeout, s.ca_cert) == ("http://flag:3", "flag-token", 3.0,
                                                      f"{tmp_path}/file/ca.crt")
    s = resolve_settings(None, None, config=cfg, env=env)
    assert (s.api, s.token) == ("http://env:2", "env-token")
    s = resolve_settings(None, None, config=cfg, env={"CFNET_API": "", "CFNET_TOKEN": ""})
    assert (s.api, s.token) == ("http://file:1", "file-token")
    s = resolve_settings(None, None, config=cfg, timeout=7.5, ca_cert=f"{tmp_path}/flag/ca.crt",
                         env={"CFNET_CA_CERT": f"{tmp_path}/env/ca.crt"})
    assert (s.timeout, s.ca_cert) == (7.5, f"{tmp_path}/flag/ca.crt")
    s = resolve_settings(None, None, config=cfg, env={"CFNET_CA_CERT": f"{tmp_path}/env/ca.crt"})
    assert s.ca_cert == f"{tmp_path}/env/ca.crt"


def test_missing_ca_cert_is_a_usage_error(cfnet, closed_port, tmp_path):
    r = cfnet("policy", "list", "--api", f"https://127.0.0.1:{closed_port}",
              "--ca-cert", str(tmp_path / "nope.crt"))
    assert r.exit_code == ExitCode.USAGE
    assert r.stderr == f"error: CA certificate file {tmp_path / 'nope.crt'} does not exist\n"


def test_default_config_file_under_xdg_config_home(tmp_path):
    write_config(tmp_path / "cfnet" / "cli.toml", 'api = "http://file:1"\n')
    s = resolve_settings(env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert (s.api, s.token, s.timeout) == ("http://file:1", None, CliConfig().timeout)


def test_missing_default_config_file_is_fine_missing_explicit_one_is_not(tmp_path):
    s = resolve_settings("http://flag:1", env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert s.token is None
    with pytest.raises(ConfigError, match="reading config: .*nope.toml"):
        resolve_settings("http://flag:1", config=tmp_path / "nope.toml", env={})


def test_json_config_file(tmp_path):
    cfg = write_config(tmp_path / "cli.json", json.dumps({"api": "http://j:1", "token": "t"}))
    assert resolve_settings(config=cfg, env={}).token == "t"


@pytest.mark.parametrize("text, message", [
    ('apii = "x"\n', "unknown key 'apii'"),
    ("api = 3\n", "key 'api': expected a string"),
    ("timeout = 0\n", "key 'timeout': 0 must be a number of seconds from 0.001 to 3600"),
    ("api = \n", "parsing config"),
])
def test_bad_config_file(tmp_path, text, message):
    cfg = write_config(tmp_path / "cli.toml", text)
    with pytest.raises(ConfigError, match=message):
        resolve_settings("http://flag:1", config=cfg, env={})


def test_no_api_anywhere_names_the_config_file(tmp_path):
    with pytest.raises(InvalidInput, match=str(tmp_path)):
        resolve_settings(env={"XDG_CONFIG_HOME": str(tmp_path)})


def test_cli_uses_flag_then_env_then_file(cfnet, clean_env, tmp_path):
    """Each source points at a different dead port; the error names the one that was used."""
    import socket

    socks = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    flag, env, file = (f"http://127.0.0.1:{s.getsockname()[1]}" for s in socks)
    try:
        write_config(Path(clean_env["XDG_CONFIG_HOME"]) / "cfnet" / "cli.toml", f'api = "{file}"\n')
        r = cfnet("policy", "list", "--api", flag, env={"CFNET_API": env})
        assert r.stderr == f"error: cannot connect to {flag}: connection refused\n"
        r = cfnet("policy", "list", env={"CFNET_API": env})
        assert r.stderr == f"error: cannot connect to {env}: connection refused\n"
        r = cfnet("policy", "list")
        assert r.stderr == f"error: cannot connect to {file}: connection refused\n"
        other = write_config(tmp_path / "other.toml", f'api = "{flag}"\n')
        r = cfnet("policy", "list", "--config", str(other))
        assert r.stderr == f"error: cannot connect to {flag}: connection refused\n"
    finally:
        for s in socks:
            s.close()


def test_cli_bad_config_file_exit_code(cfnet, tmp_path):
    cfg = write_config(tmp_path / "cli.toml", 'server = "http://x"\n')
    r = cfnet("policy", "list", "--config", str(cfg))
    assert r.exit_code == ExitCode.CONFIG
    assert r.stderr == "error: invalid config: unknown key 'server'\n"
