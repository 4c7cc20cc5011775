"""The rep-task channel: who owns the follow-up, the task with its context, and the CRM/Slack/webhook connectors."""
