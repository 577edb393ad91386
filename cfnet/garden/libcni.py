"""A CNI runtime with libcni's semantics (spec dataplane 4.6), for the garden hook.

- Config discovery: the first `*.conflist` under the config dir (recursive, lexical order), else
  the first `*.conf` wrapped as a one-plugin list; a warning on stderr when there are several.
- Each plugin gets `name` and `cniVersion` of the list and `prevResult` (the previous plugin's
  result on ADD, the cached result on DEL from 0.4.0 on), plus the caller's extra keys.
- Plugins are found by type in the plugin path and exec'd with the CNI environment. cfnet's own
  plugins (`silk-cni`, `cni-wrapper-plugin`) are called in-process through `cfnet.cni.plugin`
  when their module is importable: same protocol checks, no exec, no second Python start-up.
- After a successful ADD the result is cached as `<cache>/results/<net>-<id>-<ifname>`
  (libcni's cniCacheV1 shape), so DEL finds it after a restart; DEL runs the plugins in reverse
  order and removes the cache entry, also when it is unreadable.

Beyond libcni: an ADD that fails at plugin k runs DEL on plugins k..0 before returning the error,
so nothing a plugin already did survives; and DEL re-injects the `runtimeConfig` cached at ADD
(libcni re-sends capability args on DEL; without them portmap cannot find its rules). The cache
entry is written once before the first plugin runs, so that holds after a crash mid-ADD too.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cfnet.core import files

if TYPE_CHECKING:
    import subprocess

# type name -> name in cfnet.cni.entry.PLUGINS
IN_PROCESS: dict[str, str] = {"silk-cni": "silk", "cni-wrapper-plugin": "wrapper"}


class CNIFailure(Exception):
    """A failed list operation, worded as libcni words it."""


@dataclass
class ConfList:
    name: str
    cni_version: str
    plugins: list[dict[str, Any]]
    raw: bytes = b""
    disable_check: bool = False


@dataclass
class Attachment:
    container_id: str
    netns: str
    ifname: str = "eth0"
    extra: dict[str, Any] = field(default_factory=dict)  # keys injected into every plugin on ADD


# ------------------------------------------------------------------------------------------------
# Config discovery


def _go_list(items: list[str]) -> str:
    return "[" + " ".join(items) + "]"


def _walk(root: str) -> list[str]:
    """Go's filepath.Walk: lexical order, depth first; an unreadable root is an error."""
    out: list[str] = []
    try:
        entries = sorted(os.listdir(root))
    except NotADirectoryError:
        return [root]
    for name in entries:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            out.extend(_walk(path))
        else:
            out.append(path)
    return out


def conflist_from_bytes(data: bytes) -> ConfList:
    try:
        raw = json.loads(data)
    except ValueError as e:
        raise CNIFailure(f"error parsing configuration list: {e}") from None
    if not isinstance(raw, dict):
        raise CNIFailure("error parsing configuration list: not a JSON object")
    name = raw.get("name")
    if name is None:
        raise CNIFailure("error parsing configuration list: no name")
    if not isinstance(name, str):
        raise CNIFailure("error parsing configuration list: invalid name type "
                         f"{type(name).__name__}")
    version = raw.get("cniVersion", "")
    if not isinstance(version, str):
        raise CNIFailure("error parsing configuration list: invalid cniVersion type")
    plugins = raw.get("plugins")
    if plugins is None:
        raise CNIFailure("error parsing configuration list: no 'plugins' key")
    if not isinstance(plugins, list):
        raise CNIFailure("error parsing configuration list: invalid 'plugins' type")
    if not plugins:
        raise CNIFailure("error parsing configuration list: no plugins in list")
    for i, p in enumerate(plugins):
        if not isinstance(p, dict) or not isinstance(p.get("type"), str) or not p["type"]:
            raise CNIFailure(f"failed to parse plugin config {i}: missing 'type'")
    return ConfList(name=name, cni_version=version, plugins=plugins, raw=data,
                    disable_check=bool(raw.get("disableCheck")))


def conf_as_list(data: bytes) -> ConfList:
    """A single-plugin `.conf` wrapped as a list (libcni ConfListFromConf)."""
    try:
        raw = json.loads(data)
    except ValueError as e:
        raise CNIFailure(f"error parsing configuration: {e}") from None
    if not isinstance(raw, dict) or not raw.get("type"):
        raise CNIFailure("error parsing configuration: missing 'type'")
    wrapped = {"cniVersion": raw.get("cniVersion", ""), "name": raw.get("name", ""),
               "plugins": [raw]}
    return conflist_from_bytes(json.dumps(wrapped).encode())


def load_conflist(config_dir: str) -> ConfList | None:
    """The list to run, or None when the directory holds no config (a nil list upstream)."""
    try:
        files = _walk(config_dir)
    except OSError as e:
        raise CNIFailure(f"error walking config directory: lstat {config_dir}: "
                         f"{_strerror(e)}") from None
    lists = [f for f in files if f.endswith(".conflist")]
    confs = [f for f in files if f.endswith(".conf")]
    if len(lists) + len(confs) > 1:
        sys.stderr.write("Only one CNI config file or conflist (chain) will be executed. "
                         "If multiple CNI config files are present, behavior is undefined.\n")
    path = lists[0] if lists else (confs[0] if confs else None)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
        return conflist_from_bytes(data) if lists else conf_as_list(data)
    except CNIFailure as e:
        raise CNIFailure(f"unable to load config from {path}: {e}") from None
    except OSError as e:
        raise CNIFailure(f"unable to load config from {path}: {_strerror(e)}") from None


def _strerror(e: OSError) -> str:
    text = os.strerror(e.errno) if e.errno else str(e)
    return text[:1].lower() + text[1:]


# ------------------------------------------------------------------------------------------------
# Results


def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in v.split("."))
    except ValueError:
        return (0,)


def as_040(result: dict[str, Any]) -> dict[str, Any]:
    """A 0.4.0/1.x result in 0.4.0 form (each IP names its version), as GEN converts it."""
    out = copy.deepcopy(result)
    out["cniVersion"] = "0.4.0"
    for ip in out.get("ips") or []:
        if "version" not in ip:
            ip["version"] = "6" if ":" in str(ip.get("address", "")) else "4"
    return out


# ------------------------------------------------------------------------------------------------
# The runtime

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


def validate_names(conflist: ConfList, att: Attachment) -> None:
    """libcni's checks before it runs a list (the names also make the cache file's path)."""
    if not att.container_id:
        raise CNIFailure("missing containerID")
    if not _NAME_RE.match(att.container_id):
        raise CNIFailure(f"invalid characters in containerID; {att.container_id}")
    if not conflist.name:
        raise CNIFailure("missing network name")
    if not _NAME_RE.match(conflist.name):
        raise CNIFailure(f"invalid characters found in network name; {conflist.name}")
    if not att.ifname:
        raise CNIFailure("interface name is empty")
    if len(att.ifname.encode()) > 15 or att.ifname in (".", "..") or \
            re.search(r"[/:\s]", att.ifname):
        raise CNIFailure(f"invalid interface name; {att.ifname}")


class Runtime:
    def __init__(self, path: list[str], cache_dir: str) -> None:
        self.path = path
        self.cache_dir = cache_dir
        self._plugins: dict[str, Any] = {}

    # -- list operations ----------------------------------------------------------------------

    def add_list(self, conflist: ConfList, att: Attachment) -> dict[str, Any] | None:
        """ADD every plugin in order; on failure, DEL what ran, then raise CNIFailure.

        A pending cache entry (no result yet, but the runtimeConfig) is written before the first
        plugin runs, so that a DEL after a crash mid-ADD still tells portmap-like plugins what
        to remove.
        """
        validate_names(conflist, att)
        self._cache_set(conflist, att, None)
        prev: dict[str, Any] | None = None
        try:
            for i, plugin in enumerate(conflist.plugins):
                conf = self._inject(conflist, plugin, prev, att.extra)
                try:
                    prev = self._invoke("ADD", conf, att)
                except CNIFailure as e:
                    self._rollback(conflist, att, i, prev)
                    raise CNIFailure(f'plugin type="{plugin["type"]}" failed (add): {e}') \
                        from None
                except BaseException:  # terminated mid-plugin: that plugin and the earlier ones
                    self._rollback(conflist, att, i, prev)
                    raise
            try:
                self._cache_set(conflist, att, prev)
            except CNIFailure:
                self._rollback(conflist, att, len(conflist.plugins) - 1, prev)
                raise
        except BaseException:
            self._cache_remove_quietly(conflist, att)
            raise
        return prev

    def _cache_set(self, conflist: ConfList, att: Attachment,
                   result: dict[str, Any] | None) -> None:
        try:
            self._cache_write(conflist, att, result)
        except OSError as e:
            raise CNIFailure(f'failed to set network "{conflist.name}" cached result: '
                             f"{_strerror(e)}") from None

    def _cache_remove_quietly(self, conflist: ConfList, att: Attachment) -> None:
        try:
            self._cache_remove(conflist, att)
        except CNIFailure:
            pass

    def del_list(self, conflist: ConfList, att: Attachment) -> None:
        """DEL every plugin in reverse with the cached result; the cache entry goes afterwards."""
        validate_names(conflist, att)
        cached = self._cache_read(conflist, att)
        prev = cached.get("result") if cached else None
        extra = cached.get("cfnetRuntimeConfig") if cached else None
        if _version_tuple(conflist.cni_version) < (0, 4, 0):
            prev = None
        for plugin in reversed(conflist.plugins):
            conf = self._inject(conflist, plugin, prev,
                                {"runtimeConfig": extra} if extra else {})
            try:
                self._invoke("DEL", conf, att)
            except CNIFailure as e:
                raise CNIFailure(f'plugin type="{plugin["type"]}" failed (delete): {e}') from None
        self._cache_remove(conflist, att)

    def _rollback(self, conflist: ConfList, att: Attachment, failed: int,
                  prev: dict[str, Any] | None) -> None:
        rc = att.extra.get("runtimeConfig")
        for plugin in reversed(conflist.plugins[:failed + 1]):
            conf = self._inject(conflist, plugin, prev, {"runtimeConfig": rc} if rc else {})
            try:
                self._invoke("DEL", conf, att)
            except CNIFailure as e:
                sys.stderr.write(f'rollback: plugin type="{plugin["type"]}" failed (delete): {e}\n')

    # -- one plugin -----------------------------------------------------------------------------

    @staticmethod
    def _inject(conflist: ConfList, plugin: dict[str, Any], prev: dict[str, Any] | None,
                extra: dict[str, Any]) -> dict[str, Any]:
        conf = copy.deepcopy(plugin)
        conf["name"] = conflist.name
        conf["cniVersion"] = conflist.cni_version
        if prev is not None:
            conf["prevResult"] = prev
        for key, value in extra.items():
            conf[key] = copy.deepcopy(value)
        return conf

    def _invoke(self, command: str, conf: dict[str, Any], att: Attachment) -> dict[str, Any] | None:
        ptype = conf["type"]
        in_process = self._in_process(ptype)
        if in_process is not None:
            return self._call(in_process, command, conf, att)
        return self._exec(self.find(ptype), command, conf, att)

    def find(self, ptype: str) -> str:
        for d in self.path:
            candidate = os.path.join(d, ptype)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        raise CNIFailure(f'failed to find plugin "{ptype}" in path {_go_list(self.path)}')

    def _in_process(self, ptype: str) -> Any:
        name = IN_PROCESS.get(ptype)
        if name is None:
            return None
        if name in self._plugins:
            return self._plugins[name]
        from cfnet.cni import entry

        plugin = None
        if name in entry.PLUGINS and importlib.util.find_spec(entry.PLUGINS[name][0]) is not None:
            plugin = entry.load_plugin(name)
        self._plugins[name] = plugin
        return plugin

    def _call(self, plugin: Any, command: str, conf: dict[str, Any],
              att: Attachment) -> dict[str, Any] | None:
        from cfnet.cni.plugin import invoke
        from cfnet.cni.types import CmdArgs, CNIError

        args = CmdArgs(command=command, container_id=att.container_id, netns=att.netns,
                       ifname=att.ifname, args={}, path=list(self.path))
        try:
            result = invoke(plugin, command, conf, args)
        except CNIError as e:
            raise CNIFailure(f"{e.msg}; {e.details}" if e.details else e.msg) from None
        except Exception as e:  # noqa: BLE001 - a plugin bug is still a clean CNI failure
            raise CNIFailure(str(e) or type(e).__name__) from None
        if result is None:
            return None
        return result.to_dict(str(conf.get("cniVersion") or "0.1.0"))

    def _exec(self, binary: str, command: str, conf: dict[str, Any],
              att: Attachment) -> dict[str, Any] | None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        import subprocess  # only when a plugin is exec'd

        env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": att.container_id,
                    "CNI_NETNS": att.netns, "CNI_IFNAME": att.ifname,
                    "CNI_PATH": ":".join(self.path), "CNI_ARGS": ""})
        try:
            proc = subprocess.run([binary], input=json.dumps(conf).encode(), env=env,
                                  capture_output=True, close_fds=True)
        except OSError as e:
            raise CNIFailure(f"fork/exec {binary}: {_strerror(e)}") from None
        if proc.returncode != 0:
            raise CNIFailure(_plugin_error(proc))
        if command != "ADD":
            return None
        try:
            result = json.loads(proc.stdout)
        except ValueError as e:
            raise CNIFailure(f"decoding version from network config: {e}") from None
        if not isinstance(result, dict):
            raise CNIFailure("decoding result: not a JSON object")
        return result

    # -- cache ------------------------------------------------------------------------------------

    def cache_path(self, conflist: ConfList, att: Attachment) -> str:
        return os.path.join(self.cache_dir, "results",
                            f"{conflist.name}-{att.container_id}-{att.ifname}")

    def _cache_write(self, conflist: ConfList, att: Attachment,
                     result: dict[str, Any] | None) -> None:
        path = self.cache_path(conflist, att)
        entry: dict[str, Any] = {
            "kind": "cniCacheV1",
            "containerId": att.container_id,
            "config": base64.b64encode(conflist.raw).decode(),
            "ifName": att.ifname,
            "networkName": conflist.name,
            "netns": att.netns,
            "result": result,
        }
        if att.extra.get("runtimeConfig"):
            entry["cfnetRuntimeConfig"] = att.extra["runtimeConfig"]
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        files.replace(path, json.dumps(entry).encode(), mode=0o666)

    def _cache_read(self, conflist: ConfList, att: Attachment) -> dict[str, Any] | None:
        try:
            with open(self.cache_path(conflist, att), "rb") as f:
                entry = json.loads(f.read())
        except (OSError, ValueError):
            return None  # missing or unreadable: DEL goes on without it
        return entry if isinstance(entry, dict) else None

    def _cache_remove(self, conflist: ConfList, att: Attachment) -> None:
        try:
            os.remove(self.cache_path(conflist, att))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CNIFailure(f"failed to remove cached result: {_strerror(e)}") from None

    def has_cache(self, conflist: ConfList, att: Attachment) -> bool:
        return os.path.exists(self.cache_path(conflist, att))


def _plugin_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    """libcni's pluginErr: the plugin's JSON error, or what it printed instead."""
    out, err = proc.stdout, proc.stderr
    if not out.strip():
        if not err.strip():
            return f"netplugin failed with no error message: exit status {proc.returncode}"
        return f"netplugin failed: {json.dumps(err.decode(errors='replace'))}"
    from cfnet.garden import gojson

    try:
        data = gojson.unmarshal(out)
        msg, details = str(data.get("msg", "")), str(data.get("details", "") or "")
    except (gojson.GoJSONError, AttributeError) as e:
        return (f"netplugin failed but error parsing its diagnostic message "
                f"{json.dumps(out.decode(errors='replace'))}: {e}")
    return f"{msg}; {details}" if details else msg
