"""The `cfnet vxlan-agent` process: start-up (spec dataplane 1.3), loops, and HTTP endpoints (1.10).

Loops (asyncio; every cycle runs on one worker thread, so cycles never overlap):

- policy watcher: long-polls `policies_last_updated?wait=&since=` on a thread of its own and runs
  a c2c cycle as soon as the stamp moves. A server without the watch answers at once with an
  unchanged stamp; the agent notices, logs `policy-watch-unsupported` and polls every
  `poll_interval` (with jitter) like upstream. A failing stamp request runs a full cycle anyway.
- ticker, every `poll_interval`: a c2c cycle when the datastore version moved (a container was
  created or destroyed: Q4 fixed) or a resync is due;
- ASG loop, every `asg_poll_interval`: ASGs of every container (if `enable_asg_syncing`), then
  orphan cleanup.

Force listener (plain HTTP, any method): `/force-policy-poll-cycle`,
`/force-asgs-for-container?container=H`, `/force-orphaned-asgs-cleanup?container=H`; each answers
only after the work is in the kernel. Debug listener: `/log-level`, `/iptables-c2c-logging`
(a toggle forces a cycle: Q3 fixed), `/metrics`, `/health`.
"""

from __future__ import annotations

import asyncio
import json
import queue
import random
import sys
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cfnet.agent.agent import Agent, AgentError
from cfnet.agent.config import AgentConfig, datastore_dir_exists, load_agent_config
from cfnet.cli.exit_codes import ExitCode
from cfnet.core.errors import CfnetError, ConfigError
from cfnet.core.logs import Logger, setup_logging

SERVICE = "vxlan-policy-agent"


def jittered(interval: float, jitter: float) -> float:
    spread = interval * jitter
    return max(0.05, interval + random.uniform(-spread, spread))


def underlay_interfaces(ips: list[str]) -> list[str]:
    """Interface names holding each underlay IP, in order (spec 1.2)."""
    from pyroute2 import IPRoute

    names = []
    with IPRoute() as ipr:
        by_ip: dict[str, str] = {}
        for a in ipr.get_addr(family=2):
            addr = a.get("IFA_ADDRESS")
            link = ipr.get_links(a["index"])[0].get("IFLA_IFNAME")
            by_ip.setdefault(addr, link)
        for ip in ips:
            if ip not in by_ip:
                raise AgentError(f"looking up interface names: no interface has address {ip}")
            names.append(by_ip[ip])
    return names


class DaemonExecutor(Executor):
    """One daemon thread: a long-poll in flight must not keep the process alive at exit
    (ThreadPoolExecutor joins its threads at interpreter exit)."""

    def __init__(self, name: str) -> None:
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._main, name=name, daemon=True).start()

    def _main(self) -> None:
        while True:
            fut, fn, args = self._q.get()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(e)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        self._q.put((fut, lambda *a: fn(*a, **kwargs), args))
        return fut


class Service:
    def __init__(self, agent: Agent, watch_client: Any) -> None:
        self.agent = agent
        self.config: AgentConfig = agent.config
        self.log: Logger = agent.log
        self.watch_client = watch_client
        self.work = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent")
        self.watcher = DaemonExecutor("agent-watch")
        self.watching = self.config.policy_watch
        self.stamp: int | None = None

    async def run_work(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.work, fn, *args)

    async def cycle(self, full: bool = False, reason: str = "") -> None:
        try:
            await self.run_work(self.agent.policy_cycle, full)
        except AgentError as e:
            self.log.error("poll-cycle", error=str(e), reason=reason)

    # -- loops ------------------------------------------------------------------------------------

    async def policy_loop(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        while True:
            wait = cfg.policy_watch_seconds if self.watching else None
            since = self.stamp if self.watching else None
            t0 = time.monotonic()
            try:
                stamp = await loop.run_in_executor(
                    self.watcher, self.watch_client.policies_last_updated, wait, since)
            except Exception as e:  # noqa: BLE001 - any client failure: a full cycle, as upstream
                self.log.error("error-getting-policies-last-updated", error=str(e))
                await self.cycle(reason="last-updated-failed")
                await asyncio.sleep(jittered(cfg.poll_interval, cfg.poll_jitter))
                continue
            elapsed = time.monotonic() - t0
            if self.stamp is None or stamp != self.stamp:
                first = self.stamp is None
                self.stamp = stamp
                if not first:
                    await self.cycle(reason="policies-changed")
            else:
                self.log.debug("skipping-poll-cycle")
                if self.watching and elapsed < min(1.0, cfg.policy_watch_seconds / 2):
                    self.watching = False
                    self.log.info("policy-watch-unsupported",
                                  hint="the policy server answered at once; polling instead")
            if not self.watching:
                await asyncio.sleep(jittered(cfg.poll_interval, cfg.poll_jitter))

    async def ticker(self) -> None:
        cfg = self.config
        while True:
            await asyncio.sleep(jittered(cfg.poll_interval, cfg.poll_jitter))
            try:
                moved = self.agent.datastore_moved()
            except CfnetError as e:
                self.log.error("datastore-version", error=str(e))
                continue
            if moved or self.agent.resync_due():
                await self.cycle(full=not moved, reason="datastore" if moved else "resync")

    async def asg_loop(self) -> None:
        cfg = self.config
        while True:
            await asyncio.sleep(jittered(cfg.asg_poll_interval, cfg.poll_jitter))
            if cfg.enable_asg_syncing:
                try:
                    await self.run_work(self.agent.asg_cycle, None)
                except AgentError as e:
                    self.log.error("asg-poll-cycle", error=str(e))
            try:
                await self.run_work(self.agent.cleanup_orphans)
            except CfnetError as e:
                self.log.error("clean-up-orphans", error=str(e))

    # -- HTTP -------------------------------------------------------------------------------------

    def force_app(self) -> Any:
        """Any method; plain-text bodies as upstream."""
        agent, cfg, log = self.agent, self.config, self.log

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            path = scope["path"]
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            handle = (query.get("container") or [""])[0]
            status, body = 404, "404 page not found\n"
            if path == "/force-policy-poll-cycle":
                try:
                    await self.run_work(agent.policy_cycle, False)
                    status, body = 200, ""
                except AgentError as e:
                    log.error("force-policy-poll-cycle", error=str(e))
                    status, body = 500, f"failed to force policy poll cycle: {e}"
            elif path in ("/force-asgs-for-container", "/force-orphaned-asgs-cleanup"):
                if not cfg.enable_asg_syncing:
                    status, body = 405, "ASG syncing has been disabled administratively"
                elif not handle:
                    status, body = 400, "no container specified"
                elif path == "/force-asgs-for-container":
                    try:
                        await self.run_work(agent.asg_cycle, handle)
                        status, body = 200, f"updated container {handle}"
                    except AgentError as e:
                        log.error("force-asgs-for-container", container=handle, error=str(e))
                        status = 500
                        body = f"failed to update asgs for container {handle}: {e}"
                else:
                    try:
                        await self.run_work(agent.cleanup_container, handle)
                        status, body = 200, f"cleaned up ASGs for container {handle}"
                    except CfnetError as e:
                        status = 500
                        body = (f"failed to cleanup ASGs for container {handle}: "
                                f"clean-up-orphaned-asg-chains: {e}")
            data = body.encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                    (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})

        return app

    def debug_app(self) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST
        from starlette.requests import Request
        from starlette.responses import Response

        from cfnet.web.debug import debug_app
        from cfnet.web.router import Route, error_response, json_response

        agent, log = self.agent, self.log

        async def get_logging(request: Request) -> Response:
            return json_response({"enabled": agent.c2c_logging})

        async def put_logging(request: Request) -> Response:
            try:
                body = json.loads(await request.body())
            except ValueError:
                return error_response(400, "decoding request body as json")
            if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
                return error_response(400, "missing required key 'enabled'")
            if body["enabled"] != agent.c2c_logging:
                agent.c2c_logging = body["enabled"]
                log.info("c2c-logging-changed", enabled=agent.c2c_logging)
                await self.cycle(reason="logging-toggled")
            return json_response({"enabled": agent.c2c_logging})

        async def health(request: Request) -> Response:
            if agent.ready:
                return json_response({"healthy": True})
            return json_response({"healthy": False}, status=503)

        return debug_app(log.set_level, log, agent.metrics.render, content_type=CONTENT_TYPE_LATEST,
                         extra=[Route("GET", "/iptables-c2c-logging", get_logging),
                                Route("PUT", "/iptables-c2c-logging", put_logging),
                                Route("GET", "/health", health)])


# -- the process ----------------------------------------------------------------------------------


def _fail(message: str) -> int:
    print(f"cfnetworking: {message}", file=sys.stderr, flush=True)
    return ExitCode.ERROR


def _client(config: AgentConfig, timeout: float) -> Any:
    from cfnet.clients.internal_api import InternalClient
    from cfnet.web.tls import TLSFiles

    files = TLSFiles(Path(config.client_cert_file), Path(config.client_key_file),
                     Path(config.ca_cert_file))
    for p in (files.cert, files.key, files.ca):
        if not p.is_file():
            raise ConfigError(f"unable to load cert or key: {p}: no such file")
    return InternalClient(config.policy_server_url, files, timeout=timeout)


def run(config_path: str | Path) -> int:
    """Run until SIGTERM/SIGINT (exit 0); start-up failures exit 1 with one stderr line."""
    try:
        config = load_agent_config(config_path)
    except ConfigError as e:
        return _fail(f"could not read config file {e}")
    source = f"{config.log_prefix}.{SERVICE}"
    log = setup_logging(source, config.log_level)
    log.info("parsed-config", policy_server_url=config.policy_server_url,
             datastore=config.cni_datastore_path, mode=config.policy_enforcement_mode,
             watch=config.policy_watch)
    if not datastore_dir_exists(config):
        log.error("datastore-directory-stat", path=config.cni_datastore_path)
        return _fail(f"datastore-directory-stat: {Path(config.cni_datastore_path).parent}: "
                     "no such file or directory")
    try:
        ifs = underlay_interfaces(config.underlay_ips)
        client = _client(config, config.client_timeout_seconds)
        watch_client = _client(config, config.client_timeout_seconds)
    except (AgentError, ConfigError) as e:
        log.error("start", error=str(e))
        return _fail(str(e))
    try:
        stamp = client.policies_last_updated()  # the connectivity check (see docs)
    except Exception as e:  # noqa: BLE001
        log.error("policy-client-get-policies", error=str(e))
        return _fail(f"policy-client-get-policies: {e}")
    agent = Agent(config, client, log, underlay_ifs=ifs)
    service = Service(agent, watch_client)
    service.stamp = stamp
    try:
        return asyncio.run(_main(service))
    except (CfnetError, OSError) as e:
        log.error("fatal", error=str(e))
        return _fail(str(e))
    finally:
        agent.nft.close()
        client.close()
        watch_client.close()


async def _main(service: Service) -> int:
    from cfnet.web.serve import Listener, serve

    cfg, log, agent = service.config, service.log, service.agent
    try:
        await service.run_work(agent.start)
        if cfg.enable_asg_syncing:
            try:
                await service.run_work(agent.asg_cycle, None)
            except AgentError as e:
                log.error("asg-poll-cycle", error=str(e))
        listeners = [
            Listener("debug", service.debug_app(), cfg.debug_server_host, cfg.debug_server_port),
            Listener("force", service.force_app(), cfg.force_policy_poll_cycle_host,
                     cfg.force_policy_poll_cycle_port),
        ]
        for listener in listeners:
            listener.bind()
        log.info("starting-servers", **{l.name: f"{l.host}:{l.port}" for l in listeners})
        await serve(listeners, background=[service.policy_loop, service.ticker, service.asg_loop],
                    grace=2.0, on_ready=lambda: log.info("starting"))
    finally:
        service.work.shutdown(wait=False, cancel_futures=True)
    log.info("exited")
    return ExitCode.OK


def reset_table(config_path: str | Path) -> int:
    """`--reset`: drop and rebuild the cell table (pre-start; removes every container's rules)."""
    from cfnet.net import cell_table as ct
    from cfnet.net.nft import Nft

    try:
        config = load_agent_config(config_path)
    except ConfigError as e:
        return _fail(f"could not read config file {e}")
    try:
        with Nft() as nft:
            nft.run(ct.render_reset(ct.CellConfig(vtep_name=config.vtep_name,
                                                  no_masquerade_cidr=config.overlay_network)))
    except CfnetError as e:
        return _fail(f"reset: {e}")
    return ExitCode.OK
