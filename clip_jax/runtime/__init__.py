"""Where a run executes: device mesh and logical-axis rules, hardware facts, host tuning, and
joining a multi-process job."""
