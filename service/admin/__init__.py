"""Administration: the ``/admin/v1`` API, its audit log, and ``metrics_auth`` (docs/admin-api.md).

operations.py   what an administrator can do: one implementation for the API and the command
audit.py        writing a change into the audit log (the ledger database)
auth.py         the admin key; the key /metrics and /ready want when metrics_auth is on
routes.py       the /admin/v1 routes, mounted only when admin_api_key is set
"""
