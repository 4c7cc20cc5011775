"""Channels: the nurture actions delivered — email, in-app offers, rep tasks."""
