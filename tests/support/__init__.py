"""What the tests share, one of each: ``models`` (the scripted model), ``driver`` (a conversation driven
through the runtime), ``sockets`` (a socket over the whole ASGI stack), ``history`` (stored rows and the
API's rules for them), ``seed`` (the contract's demo data and the seed conversation), ``browser`` (a real
daphne for a real Chromium) and ``fake_openai`` (a scripted OpenAI-compatible server on loopback)."""
