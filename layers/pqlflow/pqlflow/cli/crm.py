"""`pqlflow crm setup`: create the `pqlflow` company property group and the properties CRM sync writes in
HubSpot (idempotent: what exists is left alone). The token comes from $PQLFLOW_HUBSPOT_TOKEN (or the
variable `--token-env` names), else from the stack's connector secret (`--secret-arn`, its `hubspot.token`)."""

from __future__ import annotations

import argparse
import json
import os

from pqlflow.kernel.errors import UsageError

TOKEN_ENV = "PQLFLOW_HUBSPOT_TOKEN"  # noqa: S105 - the name of a variable, not a token


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("crm", help="set up the CRM that CRM sync writes PQLs to")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    setup = actions.add_parser("setup", help="create the pqlflow property group and company properties in HubSpot")
    setup.add_argument("--token-env", default=TOKEN_ENV,
                       help=f"environment variable holding a HubSpot private app token (default ${TOKEN_ENV})")
    setup.add_argument("--secret-arn", default=os.environ.get("CONNECTOR_SECRET_ARN"),
                       help="else read hubspot.token from this secret (the stack's ConnectorSecretArn output; "
                            "default $CONNECTOR_SECRET_ARN)")
    setup.add_argument("--base-url", default=None, help="HubSpot API base URL (default: the secret's, else "
                                                         "https://api.hubapi.com)")
    setup.set_defaults(func=run_setup)


def _from_secret(arn: str) -> dict[str, object]:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        doc = json.loads(boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"])
    except (ClientError, BotoCoreError) as exc:
        raise UsageError(f"cannot read secret {arn!r}: {exc}") from None
    except json.JSONDecodeError:
        raise UsageError(f"secret {arn!r}: not a JSON object") from None
    hubspot = doc.get("hubspot") if isinstance(doc, dict) else None
    if not isinstance(hubspot, dict) or not hubspot.get("token"):
        raise UsageError(f"secret {arn!r}: no hubspot.token")
    return hubspot


def run_setup(args: argparse.Namespace) -> int:
    from pqlflow.channels.crm.hubspot import HubSpotCompanies, setup
    from pqlflow.channels.rep_tasks.http import DeliveryError

    token = os.environ.get(args.token_env, "")
    base_url = args.base_url
    if not token:
        if not args.secret_arn:
            raise UsageError(f"no token: set ${args.token_env} or give --secret-arn (the stack's ConnectorSecretArn)")
        hubspot = _from_secret(args.secret_arn)
        token = str(hubspot["token"])
        base_url = base_url or hubspot.get("base_url")
    target = HubSpotCompanies(token, str(base_url or "https://api.hubapi.com").rstrip("/"))
    try:
        result = setup(target)
    except DeliveryError as exc:
        raise UsageError(f"HubSpot: {exc}") from None
    print(f"property group pqlflow: {'created' if result.group_created else 'already there'}")
    for name in result.created:
        print(f"created  {name}")
    for name in result.existing:
        print(f"exists   {name}")
    print(f"{len(result.created)} created, {len(result.existing)} already there")
    return 0
