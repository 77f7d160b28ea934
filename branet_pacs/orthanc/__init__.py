"""The Orthanc service: what `orthanc_plugin/branet_plugin.py` drives inside Orthanc, and the worker processes.

Everything the plugin imports (status, store, rest, changes, forward, supervisor, node, settings) uses the
standard library only: Orthanc's embedded interpreter never loads torch, numpy or pydicom. The heavy work runs in
`branet_pacs.orthanc.worker`, a separate process that talks to Orthanc over its authenticated REST API.
"""
