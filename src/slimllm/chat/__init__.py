"""The chat interface: a web page and an API in front of one or more OpenAI-compatible backends.

`config` reads which models exist and where their instances are, `backends` keeps their health
and picks an instance per request (with failover), `app` is the ASGI app and `server` the
`slimllm chat-interface` command around it.
"""
