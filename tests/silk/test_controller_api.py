"""The lease API of a real `cfnet silk-controller` process over real mutual TLS, on both backends.

Most tests share one controller per backend (module scope) and use their own underlay IPs; tests
that restart the controller, age leases or exhaust the pool get a fresh controller and database.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cfnet.core.leases import Lease
from cfnet.silk.lease_client import HTTPStatusError, LeaseClient, LeaseClientError, NonRetriableError
from cfnet.store.db import Database, DatabaseConfig
from cfnet.testing.postgres import database_for_test
from cfnet.testing.silk_controller import RunningController, silk_controller
from cfnet.web.tls import Bundle, TLSFiles, client_context, generate_bundle

LEASE_RE = (rb'\{"underlay_ip":"%s","overlay_subnet":"10\.255\.(\d{1,3})\.0/24",'
            rb'"overlay_hardware_addr":"ee:ee:0a:ff:([0-9a-f]{2}):00"\}')
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return generate_bundle(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def foreign_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """Certificates from another CA, which the controller must not trust."""
    return generate_bundle(tmp_path_factory.mktemp("foreign-certs"))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def module_db(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseConfig]:
    """A database for the whole module (conftest's are per test)."""
    if request.param == "sqlite":
        yield DatabaseConfig(type="sqlite", path=str(tmp_path_factory.mktemp("db") / "silk.db"), timeout=10)
        return
    with database_for_test() as config:
        yield config


@pytest.fixture(scope="module")
def ctl(module_db: DatabaseConfig, bundle: Bundle,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningController]:
    with silk_controller(tmp_path_factory.mktemp("ctl"), module_db, bundle=bundle) as running:
        yield running


@pytest.fixture
def client(ctl: RunningController) -> Iterator[LeaseClient]:
    with ctl.client() as c:
        yield c


# -- helpers --------------------------------------------------------------------------------------


def raw(ctl: RunningController, method: str, path: str, body: bytes | None = None,
        tls: TLSFiles | None = None, context: ssl.SSLContext | None = None,
        ) -> tuple[int, dict[str, str], bytes]:
    """One request with exact bytes in and out."""
    u = urlsplit(ctl.url)
    conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=10,
                                       context=context or client_context(tls or ctl.client_tls))
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def plain(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with NO_PROXY.open(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def release_all(client: LeaseClient) -> None:
    for lease in client.routable_leases():
        client.release(lease.underlay_ip)


# -- the API, byte for byte -----------------------------------------------------------------------


def test_acquire_list_renew_release_bytes(ctl: RunningController, client: LeaseClient) -> None:
    release_all(client)
    status, _, body = raw(ctl, "PUT", "/leases/acquire", b'{"underlay_ip":"10.244.16.11"}')
    m = re.fullmatch(LEASE_RE % rb"10\.244\.16\.11", body)
    assert status == 200 and m, body
    assert int(m.group(1)) == int(m.group(2), 16) and 1 <= int(m.group(1)) <= 255

    assert raw(ctl, "GET", "/leases")[::2] == (200, b'{"leases":[' + body + b"]}")
    assert raw(ctl, "PUT", "/leases/acquire", b'{"underlay_ip":"10.244.16.11"}')[::2] == (200, body)
    assert raw(ctl, "PUT", "/leases/renew", body)[::2] == (200, b"{}")
    assert raw(ctl, "PUT", "/leases/release", b'{"underlay_ip":"10.244.16.11"}')[::2] == (200, b"{}")
    assert raw(ctl, "GET", "/leases")[::2] == (200, b'{"leases":[]}')


def test_release_of_an_unknown_lease_is_200(ctl: RunningController) -> None:
    assert raw(ctl, "PUT", "/leases/release", b'{"underlay_ip":"10.9.9.9"}')[::2] == (200, b"{}")
    assert raw(ctl, "PUT", "/leases/release", b"{}")[::2] == (200, b"{}")


def test_keys_match_case_insensitively_and_unknown_keys_are_ignored(ctl: RunningController) -> None:
    status, _, body = raw(ctl, "PUT", "/leases/acquire",
                          b'{"UNDERLAY_IP":"10.244.0.2","Single_Overlay_IP":true,"colour":"red"}')
    assert status == 200
    lease = json.loads(body)
    assert lease["underlay_ip"] == "10.244.0.2" and re.fullmatch(r"10\.255\.0\.\d+/32", lease["overlay_subnet"])
    renew = json.dumps({k.upper(): v for k, v in lease.items()} | {"extra": [1]}).encode()
    assert raw(ctl, "PUT", "/leases/renew", renew)[::2] == (200, b"{}")


ACQUIRE_TYPE = ('struct { UnderlayIP string \\"json:\\\\\\"underlay_ip\\\\\\"\\"; '
                'SingleOverlayIP bool \\"json:\\\\\\"single_overlay_ip\\\\\\"\\" }')


@pytest.mark.parametrize(("path", "body", "status", "answer"), [
    ("/leases/acquire", b"", 400, b'{"error": "unmarshal-request: unexpected end of JSON input"}'),
    ("/leases/acquire", b'{"underlay_ip":', 400, b'{"error": "unmarshal-request: unexpected end of JSON input"}'),
    ("/leases/acquire", b"nope", 400,
     b'{"error": "unmarshal-request: invalid character \'o\' in literal null (expecting \'u\')"}'),
    ("/leases/acquire", b"{} {}", 400,
     b'{"error": "unmarshal-request: invalid character \'{\' after top-level value"}'),
    ("/leases/acquire", b'{"underlay_ip": 5}', 400, b'{"error": "unmarshal-request: json: cannot '
     b'unmarshal number into Go struct field .underlay_ip of type string"}'),
    ("/leases/acquire", b'{"underlay_ip": "10.0.0.1", "single_overlay_ip": "yes"}', 400,
     b'{"error": "unmarshal-request: json: cannot unmarshal string into Go struct field '
     b'.single_overlay_ip of type bool"}'),
    ("/leases/acquire", b"[]", 400, b'{"error": "unmarshal-request: json: cannot unmarshal array '
     b'into Go value of type ' + ACQUIRE_TYPE.encode() + b'"}'),
    ("/leases/acquire", b"{}", 500, b'{"error": "invalid ipv4 address: "}'),
    ("/leases/acquire", b'{"underlay_ip":"foo"}', 500, b'{"error": "invalid ipv4 address: foo"}'),
    ("/leases/renew", b"", 400, b'{"error": "unmarshal-request: unexpected end of JSON input"}'),
    ("/leases/renew", b'"x"', 400, b'{"error": "unmarshal-request: json: cannot unmarshal string '
     b'into Go value of type controller.Lease"}'),
    ("/leases/renew", b"{}", 409, b'{"error": "renew-subnet-lease: invalid underlay ip: "}'),
    ("/leases/renew", b'{"underlay_ip":"10.1.1.1","overlay_subnet":"x","overlay_hardware_addr":"y"}',
     409, b'{"error": "renew-subnet-lease: invalid CIDR address: x"}'),
    ("/leases/renew", b'{"underlay_ip":"10.1.1.1","overlay_subnet":"10.255.9.0/24",'
     b'"overlay_hardware_addr":"y"}', 409, b'{"error": "renew-subnet-lease: address y: invalid MAC address"}'),
    ("/leases/release", b"", 400, b'{"error": "unmarshal-request: unexpected end of JSON input"}'),
    ("/leases/release", b'{"underlay_ip":true}', 400, b'{"error": "unmarshal-request: json: cannot '
     b'unmarshal bool into Go struct field .underlay_ip of type string"}'),
])
def test_bad_requests_get_upstream_errors(ctl: RunningController, path: str, body: bytes,
                                          status: int, answer: bytes) -> None:
    assert raw(ctl, "PUT", path, body)[::2] == (status, answer)


def test_router_404_and_405(ctl: RunningController) -> None:
    status, headers, body = raw(ctl, "GET", "/leases/acquire")
    assert (status, headers["allow"], body) == (405, "PUT", b"Method Not Allowed\n")
    status, headers, _ = raw(ctl, "HEAD", "/leases")
    assert (status, headers["allow"]) == (405, "GET")
    assert raw(ctl, "GET", "/nope")[::2] == (404, b"404 page not found\n")
    assert raw(ctl, "GET", "/leases/")[::2] == (404, b"404 page not found\n")


def test_health_listener(ctl: RunningController) -> None:
    assert plain(ctl.health_url)[::2] == (200, b"")
    status, headers, _ = plain(ctl.health_url, "POST", b"")
    assert (status, headers["allow"]) == (405, "GET")


def test_debug_listener_log_level_metrics_pprof(ctl: RunningController, client: LeaseClient) -> None:
    assert plain(ctl.debug_url + "/log-level")[::2] == (200, b"")
    assert plain(ctl.debug_url + "/log-level", "POST", b"bogus")[0] == 200
    assert plain(ctl.debug_url + "/log-level", "POST", b"debug")[0] == 200
    client.routable_leases()
    assert any(line["message"].endswith("request.leases-index.serving") for line in ctl.log_lines())
    assert plain(ctl.debug_url + "/log-level", "PUT", b"1")[0] == 200  # back to info

    client.acquire("10.244.7.7")
    status, _, body = plain(ctl.debug_url + "/metrics")
    text = body.decode()
    assert status == 200
    assert re.search(r'cfnet_silk_controller_requests_total\{handler="LeasesAcquire"\} [1-9]', text)
    assert 'cfnet_silk_controller_request_duration_seconds_count{handler="LeasesIndex"}' in text
    for gauge in ("leases_total", "leases_free", "leases_stale", "http_errors_total", "uptime_seconds"):
        assert f"cfnet_silk_controller_{gauge} " in text, gauge

    no_redirect = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    try:
        no_redirect.open(ctl.debug_url + "/debug/pprof", timeout=10)
        raise AssertionError("expected a redirect")
    except urllib.error.HTTPError as e:
        assert (e.code, e.headers["location"]) == (301, "/debug/pprof/")
    assert plain(ctl.debug_url + "/debug/pprof/")[0] == 200


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


# -- mutual TLS -----------------------------------------------------------------------------------


def _context(ca: Path, cert: TLSFiles | None, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_client_without_certificate_is_refused(ctl: RunningController, version: ssl.TLSVersion) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        raw(ctl, "GET", "/leases", context=_context(ctl.bundle.ca_cert, None, version))


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_client_certificate_from_another_ca_is_refused(ctl: RunningController, foreign_bundle: Bundle,
                                                       version: ssl.TLSVersion) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        raw(ctl, "GET", "/leases", context=_context(ctl.bundle.ca_cert, foreign_bundle.client, version))


def test_tls12_negotiates_only_the_upstream_suite(ctl: RunningController) -> None:
    u = urlsplit(ctl.url)
    ctx = _context(ctl.bundle.ca_cert, ctl.client_tls, ssl.TLSVersion.TLSv1_2)
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=10)
    try:
        conn.connect()
        assert conn.sock.cipher()[0] == "ECDHE-RSA-AES128-GCM-SHA256"  # type: ignore[union-attr]
    finally:
        conn.close()
    ctx.set_ciphers("ECDHE-RSA-AES256-GCM-SHA384")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        raw(ctl, "GET", "/leases", context=ctx)


def test_client_checks_the_server_against_its_ca(ctl: RunningController, foreign_bundle: Bundle) -> None:
    wrong_trust = TLSFiles(ctl.client_tls.cert, ctl.client_tls.key, foreign_bundle.ca_cert)
    with LeaseClient(ctl.url, wrong_trust) as c, pytest.raises(LeaseClientError, match="http client do"):
        c.routable_leases()


# -- the client's error conventions ---------------------------------------------------------------


def test_client_error_conventions(ctl: RunningController, client: LeaseClient) -> None:
    with pytest.raises(HTTPStatusError) as e:
        client.acquire("foo")
    assert (str(e.value), e.value.status) == ("http status 500: invalid ipv4 address: foo", 500)

    lease = client.acquire("10.244.3.3")
    with pytest.raises(NonRetriableError, match="^non-retriable: renew-subnet-lease: lease mismatch$"):
        client.renew(Lease(lease.underlay_ip, "10.255.0.9/32", "ee:ee:0a:ff:00:09"))
    client.renew(lease)
    client.release(lease.underlay_ip)

    with LeaseClient(ctl.url + "/nope", ctl.client_tls) as wrong_path:
        with pytest.raises(HTTPStatusError, match="^http status 404: 404 page not found\n$"):
            wrong_path.routable_leases()


def test_client_times_out_on_a_silent_server(ctl: RunningController) -> None:
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the TCP connection, never answers the TLS hello
    try:
        url = f"https://127.0.0.1:{silent.getsockname()[1]}"
        with LeaseClient(url, ctl.client_tls, timeout=0.3) as c:
            with pytest.raises(LeaseClientError, match="timeout"):
                c.routable_leases()
    finally:
        silent.close()


def test_client_reports_refused_connections(ctl: RunningController) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with LeaseClient(f"https://127.0.0.1:{port}", ctl.client_tls, timeout=2) as c:
        with pytest.raises(LeaseClientError, match="^http client do: GET /leases: .*refused"):
            c.routable_leases()


# -- lifecycle, expiry, concurrency (own controller and database) ---------------------------------


def _age(db_config: DatabaseConfig, underlay_ip: str, seconds: int) -> None:
    """Move a lease's last renewal `seconds` into the past, as time passing would."""
    db = Database(db_config)
    try:
        with db.transaction(write=True) as tx:
            tx.execute("UPDATE subnets SET last_renewed_at = last_renewed_at - ? WHERE underlay_ip = ?",
                       (seconds, underlay_ip))
    finally:
        db.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_cell_keeps_its_subnet_across_controller_restarts(db_config: DatabaseConfig, bundle: Bundle,
                                                            tmp_path: Path) -> None:
    port = _free_port()
    with silk_controller(tmp_path, db_config, bundle=bundle, listen_port=port) as first:
        client = first.client()
        lease = client.acquire("10.244.0.1")
    assert first.process.returncode == 0  # SIGTERM is a graceful stop
    messages = [line["message"].rsplit(".", 1)[-1] for line in first.log_lines()]
    for event in ("starting", "parsed-config", "db-migration-complete", "starting-servers",
                  "running", "lease-acquired", "exited"):
        assert event in messages, event
    assert messages.index("running") < messages.index("exited")
    migrated = next(line for line in first.log_lines() if line["message"].endswith("db-migration-complete"))
    assert migrated["data"] == {"num-applied": 1}

    with silk_controller(tmp_path, db_config, bundle=bundle, listen_port=port) as second:
        # The same client: its kept-alive connection died with the first controller, and it
        # reconnects without surfacing an error, as a daemon's renew loop needs.
        with client:
            assert client.routable_leases() == [lease]
            assert client.acquire("10.244.0.1") == lease
            client.renew(lease)
        migrated = next(l for l in second.log_lines() if l["message"].endswith("db-migration-complete"))
        assert migrated["data"] == {"num-applied": 0}


def test_expired_lease_is_reclaimed_and_the_old_owner_is_refused(db_config: DatabaseConfig, bundle: Bundle,
                                                                 tmp_path: Path) -> None:
    with silk_controller(tmp_path, db_config, bundle=bundle, network="10.255.0.0/24",
                         subnet_prefix_length=26, lease_expiration_seconds=3600) as ctl, \
            ctl.client() as c:
        old = c.acquire("10.244.0.1")
        c.acquire("10.244.0.2")
        c.acquire("10.244.0.3")
        with pytest.raises(HTTPStatusError, match="^http status 409: no lease available$"):
            c.acquire("10.244.0.4")  # every block is live: nothing is stolen

        _age(db_config, "10.244.0.1", 7200)
        assert old not in c.routable_leases()
        new = c.acquire("10.244.0.4")
        assert (new.overlay_subnet, new.overlay_hardware_addr) == (old.overlay_subnet, old.overlay_hardware_addr)

        status, _, body = raw(ctl, "PUT", "/leases/renew", json.dumps(old.to_json()).encode())
        assert status == 409 and body.startswith(b'{"error": "renew-subnet-lease: ')
        with pytest.raises(NonRetriableError, match="^non-retriable: renew-subnet-lease: "):
            c.renew(old)
        owners = [l.underlay_ip for l in c.routable_leases() if l.overlay_subnet == old.overlay_subnet]
        assert owners == ["10.244.0.4"]  # never two cells on one subnet


def test_255_concurrent_acquirers_get_distinct_subnets(db_config: DatabaseConfig, bundle: Bundle,
                                                       tmp_path: Path) -> None:
    with silk_controller(tmp_path, db_config, bundle=bundle) as ctl:
        cells = 255
        barrier = threading.Barrier(cells)
        results: dict[int, Lease | BaseException] = {}

        def cell(i: int) -> None:
            with ctl.client(timeout=60) as c:
                barrier.wait()
                try:
                    results[i] = c.acquire(f"10.244.{i // 200}.{i % 200 + 1}")
                except BaseException as e:  # noqa: BLE001 - reported below
                    results[i] = e

        threads = [threading.Thread(target=cell, args=(i,)) for i in range(cells)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        errors = [r for r in results.values() if isinstance(r, BaseException)]
        assert not errors, errors[:3]
        subnets = {r.overlay_subnet for r in results.values()}  # type: ignore[union-attr]
        assert len(subnets) == cells
        with ctl.client() as c:
            with pytest.raises(HTTPStatusError, match="^http status 409: no lease available$"):
                c.acquire("10.244.9.9")
            assert len(c.routable_leases()) == cells


def test_two_replicas_on_one_database_never_share_a_subnet(db_config: DatabaseConfig, bundle: Bundle,
                                                          tmp_path: Path) -> None:
    """60 cells race for 15 blocks through two controllers on the same database."""
    small = {"network": "10.255.0.0/24", "subnet_prefix_length": 28}
    with silk_controller(tmp_path / "a", db_config, bundle=bundle, **small) as a, \
            silk_controller(tmp_path / "b", db_config, bundle=bundle, **small) as b:
        cells = 60
        barrier = threading.Barrier(cells)
        results: dict[int, Lease | BaseException] = {}

        def cell(i: int) -> None:
            with (a if i % 2 else b).client(timeout=60) as c:
                barrier.wait()
                try:
                    results[i] = c.acquire(f"10.244.1.{i + 1}")
                except BaseException as e:  # noqa: BLE001 - sorted below
                    results[i] = e

        threads = [threading.Thread(target=cell, args=(i,)) for i in range(cells)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        leases = [r for r in results.values() if isinstance(r, Lease)]
        refused = [r for r in results.values() if isinstance(r, HTTPStatusError) and r.status == 409]
        assert len(leases) == 15 and len(refused) == cells - 15, [
            r for r in results.values() if not isinstance(r, (Lease, HTTPStatusError))][:3]
        assert len({lease.overlay_subnet for lease in leases}) == 15
