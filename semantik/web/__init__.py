"""The HTTP side: the aiohttp application, its one route table, handlers, WebSockets and the UI."""
