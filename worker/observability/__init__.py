"""Observability: Prometheus metrics (`metrics`, `sql_metrics`), the `/metrics` server of
`textworker run`, and the bearer-token auth every HTTP endpoint shares (`auth`)."""
