"""The local runtime driving a moto server on 127.0.0.1, as a dev stack does: SDK calls trigger functions."""

import boto3
import pytest
from moto.server import ThreadedMotoServer
from pqlflow.local.runtime import LocalRuntime

from tests.support.local import FIXTURE, sdk_put_event


@pytest.fixture
def endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_an_sdk_pointed_at_the_dev_endpoint_triggers_the_functions(endpoint):
    with LocalRuntime(FIXTURE, endpoint_url=endpoint) as rt:
        # Given a product team's client pointed at the local endpoint
        events = boto3.client(
            "events",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        # When it puts a usage event on the bus and the runtime pumps
        sdk_put_event(events, "app.web", "track", {"account": "a1"})
        rt.run_until_idle()
        # Then the functions ran against the server, and their calls were counted
        assert rt.counters()["invocations"] == {
            "IngestFunction": 1,
            "QualifyFunction": 1,
            "NotifyFunction": 1,
        }
        assert rt.counters()["requests"]["events"] == {"PutEvents": 1}
