"""Typed clients for the policy server: `policy_api` (external, tokens) and `internal_api` (mTLS).

Both raise `cfnet.clients.http.ApiError` on every failure, carrying the HTTP status (None when the
server could not be reached) and the server's `error` text.
"""
