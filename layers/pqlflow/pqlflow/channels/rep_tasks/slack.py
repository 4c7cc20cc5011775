"""The Slack connector: the task as a Block Kit message on an incoming webhook.

Everything in the message that comes from event data (account name and id, the owner trait, reasons,
usage, talking points, which quote the reasons) is user-supplied: the product's own users set traits.
Slack reads `<...>` in mrkdwn as a mention, a channel ping (`<!channel>`) or a link, so every such value
goes through `_mrkdwn`, which escapes `&`, `<` and `>` as Slack documents. The one control sequence
pqlflow writes itself is the mention of the rostered rep, `<@U…>`, whose id the roster validates. The
header is `plain_text`, which Slack never parses.

The message ends with a "Mark done" button (Block Kit `actions`) whose value is the task id: when the
Slack app that owns the incoming webhook has interactivity on, Slack posts the click to its request URL,
the rep_task_events function, which reports the task closed (`pqlflow.channels.rep_tasks.callbacks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pqlflow.channels.rep_tasks.http import Http
from pqlflow.channels.rep_tasks.task import RepTask

DONE_ACTION = "pqlflow_task_done"  # the button's action_id, which the interactivity endpoint looks for


def _mrkdwn(text: str, limit: int = 2900) -> str:
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if len(escaped) > limit:
        escaped = escaped[: limit - 1]
        cut = escaped.rfind("&")  # never end inside an entity: "&l" would show as text
        if cut > limit - 6 and ";" not in escaped[cut:]:
            escaped = escaped[:cut]
        escaped += "…"
    return escaped


def _code(text: str, limit: int = 200) -> str:
    """`text` as inline code: escaped, with no backtick to close the span early."""
    return f"`{_mrkdwn(text.replace('`', chr(39)), limit)}`"


@dataclass
class SlackConnector:
    """A Slack incoming webhook (Block Kit message). Slack has no idempotency key: pqlflow's stored
    delivery record is what keeps a redelivered task from posting twice."""

    webhook_url: str
    http: Http = field(default_factory=Http)
    name: str = "slack"

    def payload(self, task: RepTask) -> dict[str, Any]:
        owner = f"<@{task.slack_user_id}>" if task.slack_user_id else _code(task.owner)
        why = "\n".join(f"• {_mrkdwn(r.text, 300)}" for r in task.reasons) or "• qualified on product usage"
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": task.title[:150], "emoji": False}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Why now*\n{why}"}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*Owner*\n{owner}"},
                    {"type": "mrkdwn", "text": f"*Due*\n{_mrkdwn(task.due_at)}"},
                    {"type": "mrkdwn", "text": f"*Priority*\n{_mrkdwn(task.priority)}"},
                    {"type": "mrkdwn", "text": f"*Score*\n{task.score if task.score is not None else '—'}"},
                ],
            },
        ]
        if task.usage:
            usage = "\n".join(f"• {_mrkdwn(u.text, 200)}" for u in task.usage)
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Usage against limits*\n{usage}"}})
        points = "\n".join(f"• {_mrkdwn(p, 400)}" for p in task.talking_points)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Talking points*\n{points}"}})
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": f"account {_code(task.account_id)} · task {_code(task.task_id)}"}
                ],
            }
        )
        blocks.append(
            {
                "type": "actions",
                "block_id": "pqlflow_task",
                "elements": [
                    {
                        "type": "button",
                        "action_id": DONE_ACTION,
                        "text": {"type": "plain_text", "text": "Mark done", "emoji": False},
                        "style": "primary",
                        "value": task.task_id,
                    }
                ],
            }
        )
        return {"text": _mrkdwn(task.title), "blocks": blocks}

    def deliver(self, task: RepTask) -> tuple[str | None, int]:
        _, attempts = self.http.request("POST", self.webhook_url, body=self.payload(task), headers={})
        return None, attempts


class SlackConfig(BaseModel):
    """The `slack` object of the connector secret."""

    model_config = ConfigDict(extra="forbid")
    webhook_url: str = Field(pattern=r"^https?://")


def connect(cfg: SlackConfig, http: Http) -> SlackConnector:
    return SlackConnector(cfg.webhook_url, http)
