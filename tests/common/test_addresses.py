"""Every address setting is host:port with the port in range: gRPC would dial "host" alone at port 443 and wrap a
port past 65535 (5005200 became 24464), silently."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.aggregator.config import AggregatorSettings
from services.hospital_node.config import HospitalNodeSettings
from services.key_authority.config import KeyAuthoritySettings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("value", "problem"), [("127.0.0.1", "needs a host and a port"),
                                                ("aggregator:", "needs a host and a port"),
                                                (":50052", "needs a host and a port"),
                                                ("127.0.0.1:5005200", "port 5005200 is outside 1-65535"),
                                                ("127.0.0.1:0", "port 0 is outside"),
                                                ("host:\uff15\uff10\uff10\uff15\uff11", "needs a host and a port"),
                                                ("::1:50051", "in brackets")])
def test_an_address_without_a_valid_port_is_refused_naming_it(value: str, problem: str) -> None:
    for build in (lambda: HospitalNodeSettings(insecure=True, aggregator=value),
                  lambda: HospitalNodeSettings(insecure=True, key_authority=value),
                  lambda: AggregatorSettings(insecure=True, listen=value),
                  lambda: AggregatorSettings(insecure=True, key_authority=value),
                  lambda: KeyAuthoritySettings(insecure=True, listen=value)):
        with pytest.raises(ValidationError, match=problem):
            build()


@pytest.mark.parametrize("value", ["127.0.0.1:50052", "aggregator.example.org:443", "[::]:50051", "0.0.0.0:1",
                                   "[::1]:50051"])
def test_host_and_port_pass(value: str) -> None:
    assert HospitalNodeSettings(insecure=True, aggregator=value).aggregator == value
    assert KeyAuthoritySettings(insecure=True, listen=value).listen == value
