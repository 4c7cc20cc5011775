"""The local runtime: the SAM application of template.yaml running in-process against moto, no AWS account.

Modules, from the template inwards:
`cfn_yaml` (read the template), `intrinsics` (evaluate !Ref/!Sub/...), `template` → `model` (the wiring),
`patterns` (EventBridge pattern and FilterCriteria matching), `targets` (rule target input),
`functions` (load and invoke handlers), `eventbus` / `sqs` / `streams` (event sources), `http` (HTTP API
routes), `quirks` (the emulator's differences, smoothed at this boundary only), `requests` (counting
handlers' AWS calls), `aws` (the runtime's own clients and resource creation) and `runtime` (`LocalRuntime`).

Import `pqlflow.local.runtime.LocalRuntime` for the runtime; this package init stays import-light.
"""
