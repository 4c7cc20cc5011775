"""Nurture: the policy, the routing of a qualification to its action, and the state that makes it exactly once."""
