"""The operators' back office: who may review (access), the reads behind the review pages (selectors),
their forms, views and URLs, the live socket (consumers), exports, the dashboard and its charts."""

# Connects the receivers that close a revoked operator's sockets. Importing them here, rather than from
# a module some code path may skip, means every process that touches the operators' side (the socket
# routes, the admin through tickets.admin, the export command) also tells sockets about rights it changes.
from chat.operators import revocation  # noqa: F401
