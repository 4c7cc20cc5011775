"""Analysis beside the warehouse: backtests of definitions on history, the decision gate, the report, samples."""
