"""What replay needs from the emulator beyond `pqlflow.local`: template resources it does not create yet,
and the emails SES accepted.

Adapter module (moto only here, imported lazily by `pqlflow.replay`). Everything is derived from the
template; nothing here is a second description of the wiring:

- `create_extra_resources`: AWS::SecretsManager::Secret (a fixed local value for generated secrets, so a
  re-run signs the same unsubscribe links), AWS::SES::ConfigurationSet, and the SenderIdentity parameter
  as a verified SES identity (the sandbox step an operator does once by hand).
- `sent_emails`: the raw MIME of every SES v2 SendEmail, as moto's SES backend stored it.
"""

from __future__ import annotations

import contextlib
import hashlib

from pqlflow.local.cfn_yaml import load_yaml
from pqlflow.local.model import ACCOUNT, REGION
from pqlflow.local.naming import ResourceNames
from pqlflow.local.runtime import LocalRuntime

LOCAL_SECRET = hashlib.sha256(b"pqlflow local replay signing secret").hexdigest()  # 64 characters


def create_extra_resources(runtime: LocalRuntime) -> None:
    """Secrets, SES configuration sets and the sender identity of the runtime's template, in the emulator."""
    wiring = runtime.wiring
    template = load_yaml(wiring.template_path)
    resources = template.get("Resources") or {}
    names = ResourceNames(resources, wiring.stack_name, str(wiring.template_path))
    secrets = runtime.client("secretsmanager")
    for logical_id, resource in resources.items():
        kind = resource.get("Type")
        props = resource.get("Properties") or {}
        name = names.name_of(logical_id, f"Resources.{logical_id}")  # what !Ref gives functions
        if kind == "AWS::SecretsManager::Secret":
            value = props.get("SecretString")
            with contextlib.suppress(secrets.exceptions.ResourceExistsException):
                secrets.create_secret(Name=name, SecretString=value if isinstance(value, str) else LOCAL_SECRET)
        elif kind == "AWS::SES::ConfigurationSet":
            sesv2 = runtime.client("sesv2")
            with contextlib.suppress(sesv2.exceptions.AlreadyExistsException):
                sesv2.create_configuration_set(ConfigurationSetName=name)
    identity = wiring.parameters.get("SenderIdentity")
    if isinstance(identity, str) and identity:
        ses = runtime.client("ses")
        if "@" in identity:
            ses.verify_email_identity(EmailAddress=identity)
        else:
            ses.verify_domain_identity(Domain=identity)


def sent_emails() -> list[tuple[str, list[str], bytes]]:
    """(message id, destinations, raw MIME) of every raw email the in-process SES accepted, in order."""
    from moto.ses.models import RawMessage, ses_backends

    backend = ses_backends[ACCOUNT][REGION]
    return [
        (m.id, list(m.destinations), m.raw_data.encode("utf-8"))
        for m in backend.sent_messages
        if isinstance(m, RawMessage)
    ]
