"""When jobs run and where their state lives: the manager, the job table (SQLite or Redis), RQ."""
