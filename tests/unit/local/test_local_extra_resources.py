"""The emulator's extra resources (secrets, SES configuration sets) can be created again in the same process:
a second local stack (a second `pqlflow dev`, or a test after another) starts on the same emulator."""

from __future__ import annotations

import boto3
from moto import mock_aws
from pqlflow.local.emulator import create_extra_resources
from pqlflow.local.runtime import LocalRuntime

from tests.support.template import TEMPLATE


def test_a_second_stack_starts_where_the_first_created_its_resources() -> None:
    with mock_aws():
        for _ in range(2):
            with LocalRuntime(TEMPLATE, parameter_overrides={"LogLevel": "WARNING"}) as runtime:
                create_extra_resources(runtime)
        sets = boto3.client("sesv2", region_name="us-east-1").list_configuration_sets()["ConfigurationSets"]
        assert len(sets) == len(set(sets)) >= 1
