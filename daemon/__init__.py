"""cachemgr daemon (aiohttp service); filled by the daemon issue."""
