"""The asyncio side: file descriptors, host sockets and the one timer."""
