"""Clients of the daemon, light enough to load in every Python process.

shim.py           the tensorflow_hub resolver hook (public name: ``cachemgr.shim``)
daemon_client.py  a stdlib-only JSON client of the daemon's Unix socket
"""
