"""The local runtime: the SAM application of template.yaml running in-process against moto, no AWS account.

Modules, from the template inwards:

- `cfn_yaml` reads the template, `intrinsics` evaluates !Ref/!Sub/!If/..., `naming` gives resources
  their local names and ARNs, `template` + `triggers` build the wiring `model`;
- `patterns` matches EventBridge patterns and FilterCriteria, `targets` renders rule target input;
- `functions` loads and invokes handlers, `context` is the Lambda context stub;
- `eventbus`, `sqs`, `streams`, `scheduler` and `http` emulate the event sources;
- `quirks` smooths the emulator's differences from AWS (at this boundary only), `calls` counts the
  AWS calls handlers make, `aws` holds the runtime's own clients and creates the resources;
- `runtime` puts it together: `LocalRuntime`.

This package init stays import-light: import `pqlflow.local.runtime.LocalRuntime` for the runtime.
"""

# Accounts replay's cost estimate runs through ingest and qualify in the batches AWS forms (`pricing`). Here, so
# that `pqlflow replay --help` shows it without importing the pricing machinery on every command's start.
DEFAULT_SAMPLE_ACCOUNTS = 15
