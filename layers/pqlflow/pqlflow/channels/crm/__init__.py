"""CRM sync: each PQL transition written onto the account's CRM company record (HubSpot) and sent as a
signed webhook, exactly once per transition and never overwriting a newer status with an older one."""
