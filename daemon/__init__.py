"""cachemgrd: the cachemgr daemon (aiohttp service). Depends on the library, never the reverse."""
